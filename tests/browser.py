"""Support for the tests that drive the standalone UI in a real headless browser (Debian's chromium
through Playwright): finding chromium, the skip reason when something is missing, serving the app
on the demo models, and one page of it."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket

import pytest

CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


def chromium() -> str | None:
    for name in CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.path.exists(path):
            return path
    return None


def skip_reason() -> str | None:
    for module in ("gradio", "playwright", "diffusers"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[test,standalone]')"
    if chromium() is None:
        return ("no chromium found (looked for " + ", ".join(CANDIDATES) + "); .ci/run installs Debian's "
                "'chromium' when run as root with apt")
    return None


needs_browser = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app():
    """The standalone app on the demo models (made in the test's data folder): yields (url, ctx)."""
    from supermerger.ui.app import create_app, launch
    from supermerger.ui.standalone import make_context

    ctx = make_context()
    app = create_app(ctx)
    port = free_port()
    launch(app, port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", ctx
    finally:
        app.close()


@contextlib.contextmanager
def open_page(url: str, width: int = 1280, height: int = 900):
    """A page of the app in headless chromium, loaded (the Merge tab's buttons are there)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            page.wait_for_selector("#supermerger_merge_gen")
            yield page
        finally:
            browser.close()


def pick(page, elem_id: str, option: str) -> None:
    """Choose ``option`` in the dropdown with ``elem_id``."""
    page.locator(f"#{elem_id} input").click()
    page.locator(f'#{elem_id} [role=option][aria-label="{option}"]').click()
