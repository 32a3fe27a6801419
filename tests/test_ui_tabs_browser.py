"""The Metadata, Elements and LoRA tabs in a real headless browser: what they list is the state of when
the tab is shown (a checkpoint or LoRA written after the server started is there without pressing ↻),
the checkpoint pickers start on a model, and the refresh buttons carry a glyph every font has (the 🔄
emoji rendered as an empty box where no emoji font is installed)."""

from __future__ import annotations

import os
import shutil

from browser import needs_browser, open_page

pytestmark = needs_browser


def test_lists_are_current_when_a_tab_is_shown(app_url):
    from playwright.sync_api import expect

    url, ctx = app_url
    models_dir = ctx.host.models_dir
    with open_page(url, 1280, 900) as page:
        shutil.copy(models_dir / "demoA.safetensors", models_dir / "zz_added_later.safetensors")
        for tab, elem in (("Metadata", "supermerger_meta"), ("Elements", "supermerger_elements")):
            page.get_by_role("tab", name=tab, exact=True).click()
            picker = page.locator(f"#{elem}_model input")
            expect(picker).not_to_have_value("", timeout=30_000)  # a model is picked from the start
            expect(page.locator(f"#{elem}_refresh")).to_have_text("↻")
            picker.click()
            expect(page.locator(f'#{elem}_model [role=option][aria-label="zz_added_later.safetensors"]')) \
                .to_be_visible(timeout=30_000)
            picker.press("Escape")
        page.get_by_role("tab", name="Metadata", exact=True).click()
        page.locator("#supermerger_meta_load").click()
        expect(page.locator("#supermerger_meta_note")).to_contain_text("demoA.safetensors", timeout=30_000)
        shots = os.environ.get("SUPERMERGER_SCREENSHOTS")
        for width in (1280, 1920):
            page.set_viewport_size({"width": width, "height": 900})
            if shots:
                page.screenshot(path=os.path.join(shots, f"metadata-{width}.png"), full_page=True)

        lora_dir = ctx.host.lora_dirs()[0]
        _write_lora(os.path.join(lora_dir, "made_later.safetensors"))
        page.get_by_role("tab", name="LoRA", exact=True).click()
        expect(page.locator("#supermerger_lora_list_note")).to_contain_text(f"1 LoRA in {lora_dir}.",
                                                                            timeout=30_000)
        expect(page.locator("#supermerger_lora_list")).to_contain_text("made_later")


def _write_lora(path: str) -> None:
    import torch
    from safetensors.torch import save_file

    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file({f"{name}.lora_up.weight": torch.ones(64, 1), f"{name}.lora_down.weight": torch.ones(1, 32),
               f"{name}.alpha": torch.tensor(1.0)}, path)
