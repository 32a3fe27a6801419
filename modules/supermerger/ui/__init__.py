"""The Gradio UI (the only package, with scripts/, that imports gradio): see ``app``."""
