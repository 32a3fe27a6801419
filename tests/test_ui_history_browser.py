"""The History and LoRA tabs in a real headless browser: a clicked history row restores its merge
into the Merge tab; "Get from prompt" reads the Merge tab's prompt into the LoRA spec box."""

from __future__ import annotations

import os
import re

from browser import needs_browser, open_page

pytestmark = needs_browser


def test_history_row_restores_and_lora_prompt(app_url):
    from playwright.sync_api import expect

    import supermerger
    from supermerger.merge.recipe import Recipe

    url, ctx = app_url
    a, b = (ctx.host.checkpoint_path(f"demo{x}.safetensors") for x in "AB")
    supermerger.merge(Recipe(model_a=b, model_b=a, alpha=0.125, elemental="OUT03:attn2:0.5"))
    with open_page(url, 1800, 1000) as page:
        # recorded after the page (and the server) started: the tab shows it when opened, no Search needed
        supermerger.merge(Recipe(model_a=a, model_b=b, alpha=0.75))
        page.locator("#supermerger_prompt textarea").fill("a cat <lora:demo_style:0.7:lbw=OUTD>")

        page.get_by_role("tab", name="History").click()
        note = page.locator("#supermerger_history_note")
        expect(note).to_contain_text("Records 1-2 of 2", timeout=30_000)
        # restoring with the ID box still empty restores nothing
        page.locator("#supermerger_history_restore").click()
        message = page.locator("#supermerger_history_message textarea")
        expect(message).to_have_value(re.compile(r"^Pick a merge first"), timeout=30_000)
        # the second row is the older merge (newest first): ID and time lead, the name comes last
        first = page.locator("#supermerger_history_table [data-testid='cell-1-0']")
        expect(first).to_have_text(re.compile(r"^\s*1\s*$"))
        cell = page.locator("#supermerger_history_table [data-testid='cell-1-9']")
        expect(cell).to_contain_text("demoB x 0.875 + demoA x 0.125")
        cell.click()
        expect(message).to_have_value(re.compile(r"^Restored history ID 1 \("), timeout=30_000)
        expect(page.locator("#supermerger_history_id textarea, #supermerger_history_id input")).to_have_value("1")
        record = page.locator("#supermerger_history_record textarea")
        expect(record).to_have_value(re.compile(r"^ID +: 1\n(.|\n)*elemental +: OUT03:attn2:0.5"))
        # the ID and time columns are on screen at 1280 and 1920 px (the name no longer pushes them off)
        for width in (1280, 1920):
            page.set_viewport_size({"width": width, "height": 1000})
            box = page.locator("#supermerger_history_table [data-testid='cell-1-1']").bounding_box()
            assert box is not None and box["x"] + box["width"] <= width, box
            shots = os.environ.get("SUPERMERGER_SCREENSHOTS")
            if shots:
                page.screenshot(path=os.path.join(shots, f"history-{width}.png"), full_page=True)

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
