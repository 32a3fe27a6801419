"""One code base for three Gradio generations: the A1111 WebUI's 3.41, Forge's 4.x and the current
release the standalone app installs (6.x). Tab code uses these shims and the API all three share.

What differs, and is handled here:
- event listeners take client-side JavaScript as ``_js`` (3.x) or ``js`` (4+): ``js_kwargs``;
- ``gr.update`` exists everywhere but 4+ prefers returning a component; a plain dict works in all;
- ``css``/``js`` are ``gr.Blocks`` arguments up to 5.x and ``launch()`` arguments from 6.0:
  ``blocks_kwargs`` / ``launch_kwargs``;
- ``.style()`` is gone in 4+ (never used here); Gallery sizing goes through ``gallery_kwargs``;
- the queue's concurrency argument was renamed in 4.0 (``queue_kwargs``);
- ``gr.File(type="filepath")`` exists from 4.0 only (``file_kwargs`` / ``file_path``).
"""

from __future__ import annotations

from typing import Any

import gradio as gr


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return 0


GRADIO_VERSION: str = getattr(gr, "__version__", "0")
GRADIO_MAJOR: int = _major(GRADIO_VERSION)


def js_kwargs(code: str | None) -> dict[str, Any]:
    """The keyword that passes client-side JavaScript to an event listener."""
    if not code:
        return {}
    return {"_js": code} if GRADIO_MAJOR < 4 else {"js": code}


def update(**kwargs: Any) -> dict:
    """A property update for one output component (value, choices, interactive, visible, ...)."""
    if hasattr(gr, "update"):
        return gr.update(**kwargs)
    return {"__type__": "update", **kwargs}


def skip() -> dict:
    """Leave an output as it is."""
    return update()


def blocks_kwargs(css: str | None = None, head_js: str | None = None) -> dict[str, Any]:
    """Arguments for ``gr.Blocks``: the CSS and JavaScript go here up to Gradio 5."""
    if GRADIO_MAJOR >= 6:
        return {}
    out: dict[str, Any] = {}
    if css:
        out["css"] = css
    if head_js and GRADIO_MAJOR >= 4:  # 3.x has no head: see run_js_on_load
        out["head"] = f"<script>{head_js}</script>"
    return out


def run_js_on_load(blocks, code: str | None) -> None:
    """Gradio 3.x: run ``code`` once the page has loaded (4+ puts it in the page head instead)."""
    if code and GRADIO_MAJOR < 4:
        blocks.load(None, None, None, _js="() => {\n" + code + "\n}")


def launch_kwargs(css: str | None = None, head_js: str | None = None) -> dict[str, Any]:
    """Arguments for ``Blocks.launch``: the CSS and JavaScript go here from Gradio 6."""
    if GRADIO_MAJOR < 6:
        return {}
    out: dict[str, Any] = {}
    if css:
        out["css"] = css
    if head_js:
        out["head"] = f"<script>{head_js}</script>"
    return out


def gallery_kwargs(columns: int = 4, height: int | str | None = None) -> dict[str, Any]:
    """Gallery layout arguments (``columns``/``height`` exist from 3.41 on, ``.style()`` before)."""
    out: dict[str, Any] = {"columns": columns, "object_fit": "contain"}
    if height is not None:
        out["height"] = height
    return out


def file_kwargs() -> dict[str, Any]:
    """``gr.File`` giving paths: ``type="filepath"`` from 4.0; 3.x has only "file" (temp-file objects,
    whose ``.name`` is the path)."""
    return {"type": "filepath"} if GRADIO_MAJOR >= 4 else {"type": "file"}


def file_path(value: Any) -> str | None:
    """The path of one ``gr.File`` value on any version (a string, a dict, or a temp-file object)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("path") or value.get("name")
    return getattr(value, "name", None)


def queue_kwargs(concurrency: int = 1) -> dict[str, Any]:
    """``Blocks.queue`` arguments for one worker: merges and generation share one model."""
    if GRADIO_MAJOR < 4:
        return {"concurrency_count": concurrency}
    return {"default_concurrency_limit": concurrency}


def dropdown_kwargs(multiselect: bool = False, custom: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"multiselect": multiselect}
    if custom:
        out["allow_custom_value"] = True
    return out
