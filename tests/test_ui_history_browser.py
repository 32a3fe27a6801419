"""The History and LoRA tabs in a real headless browser: a clicked history row restores its merge
into the Merge tab; "Get from prompt" reads the Merge tab's prompt into the LoRA spec box."""

from __future__ import annotations

import re
import time

import pytest

from test_ui_browser import _chromium, _free_port, _skip_reason

pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture
def app_url():
    from supermerger.ui.app import create_app, launch
    from supermerger.ui.standalone import make_context

    ctx = make_context()  # the demo models, in this test's data folder
    app = create_app(ctx)
    port = _free_port()
    launch(app, port=port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", ctx
    finally:
        app.close()


def test_history_row_restores_and_lora_prompt(app_url):
    from playwright.sync_api import expect, sync_playwright

    import supermerger
    from supermerger.merge.recipe import Recipe

    url, ctx = app_url
    a, b = (ctx.host.checkpoint_path(f"demo{x}.safetensors") for x in "AB")
    supermerger.merge(Recipe(model_a=b, model_b=a, alpha=0.125, elemental="OUT03:attn2:0.5"))
    supermerger.merge(Recipe(model_a=a, model_b=b, alpha=0.75))
    t0 = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#supermerger_merge_gen")
            page.locator("#supermerger_prompt textarea").fill("a cat <lora:demo_style:0.7:lbw=OUTD>")

            page.get_by_role("tab", name="History").click()
            page.locator("#supermerger_history_search").click()
            note = page.locator("#supermerger_history_note")
            expect(note).to_contain_text("Records 1-2 of 2", timeout=30_000)
            # the second row is the older merge (newest first): click its name cell
            cell = page.locator("#supermerger_history_table [data-testid='cell-1-2']")
            expect(cell).to_contain_text("demoB x 0.875 + demoA x 0.125")
            cell.click()
            message = page.locator("#supermerger_history_message textarea")
            expect(message).to_have_value(re.compile(r"^Restored history ID 1 \("), timeout=30_000)
            expect(page.locator("#supermerger_history_id textarea, #supermerger_history_id input")).to_have_value("1")

            page.get_by_role("tab", name="Merge").click()
            expect(page.locator("#supermerger_model_a input")).to_have_value("demoB.safetensors")
            expect(page.locator("#supermerger_alpha input[type=number]")).to_have_value("0.125")

            page.get_by_role("tab", name="LoRA").click()
            page.locator("#supermerger_lora_from_prompt").click()
            expect(page.locator("#supermerger_lora_specs textarea")).to_have_value("demo_style:0.7:OUTD",
                                                                                   timeout=30_000)
            expect(page.locator("#supermerger_lora_message textarea")).to_have_value(
                "1 LoRA in the prompt. Not in the list: demo_style.")
            assert "Traceback" not in page.content()
        finally:
            browser.close()
    assert time.perf_counter() - t0 < 120
