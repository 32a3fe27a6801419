"""SuperMerger: a merging workbench for Stable Diffusion checkpoints (engine, CLI and library).

The engine never imports gradio or WebUI code; hosts and UIs call it.
"""

from .api import MergeResult, merge, open_sources, plan_merge, recipe_from_file
from .errors import SuperMergerError
from .merge.recipe import Recipe

__all__ = ["Recipe", "merge", "plan_merge", "open_sources", "recipe_from_file", "MergeResult", "SuperMergerError"]
__version__ = "0.1.0"
