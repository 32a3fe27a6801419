"""Recipes, ratio resolution, merge methods and the streaming executor."""
