"""The standalone UI in a real headless browser (Debian chromium driven by Playwright).

One session on the built-in demo models: pick them, set block weights from a preset, type an
elemental entry and read the live check, press Merge & Gen and see an image and the merge ID (the
ID is then checked against the merge history); type a malformed entry and see the error.
"""

from __future__ import annotations

import re

from browser import needs_browser, open_page, pick

pytestmark = needs_browser

# GRAD_V from the master presets, as the "Set alpha" button writes it (6 decimals at most)
GRAD_V = ("0,1,0.916667,0.833333,0.75,0.666667,0.583333,0.5,0.416667,0.333333,0.25,0.166667,0.083333,0,"
          "0.083333,0.166667,0.25,0.333333,0.416667,0.5,0.583333,0.666667,0.75,0.833333,0.916667,1")


BLOCKS_26 = ["BASE"] + [f"IN{i:02d}" for i in range(12)] + ["M00"] + [f"OUT{i:02d}" for i in range(12)]
XL_MISSING = {"IN09", "IN10", "IN11", "OUT09", "OUT10", "OUT11"}


def test_merge_and_gen_in_the_browser(app_url):
    from playwright.sync_api import expect

    from supermerger import history

    url, ctx = app_url
    with open_page(url) as page:
        pick(page, "supermerger_model_a", "demoA.safetensors")
        pick(page, "supermerger_model_b", "demoB.safetensors")

        page.get_by_text("Block weights (MBW)", exact=True).click()
        alpha = page.locator("#supermerger_alpha input[type=number]")
        expect(alpha).to_be_enabled()
        page.locator("#supermerger_use_mbw input").check()
        expect(alpha).to_be_disabled()  # the weight lists replace alpha
        pick(page, "supermerger_mbw_preset", "GRAD_V")
        expect(page.locator("#supermerger_mbw_slider_IN00 input[type=number]")).to_have_value("1")
        page.locator("#supermerger_mbw_set_alpha").click()
        expect(page.locator("#supermerger_mbw_alpha textarea")).to_have_value(GRAD_V)

        # slider range and the helper: quick value 0.75, Add on MID (M00 was 0 in GRAD_V)
        page.locator("#supermerger_mbw_max input").fill("3")
        page.locator("#supermerger_mbw_max input").press("Tab")
        expect(page.locator("#supermerger_mbw_slider_M00 input[type=range]")).to_have_attribute("max", "3")
        page.locator("#supermerger_helper_quick_3").click()
        expect(page.locator("#supermerger_helper_value input[type=number]")).to_have_value("0.75")
        page.get_by_label("MID", exact=True).check()
        page.get_by_label("IN", exact=True).uncheck()
        page.get_by_label("OUT", exact=True).uncheck()
        page.get_by_label("Add", exact=True).check()
        page.locator("#supermerger_helper_apply").click()
        expect(page.locator("#supermerger_mbw_slider_M00 input[type=number]")).to_have_value("0.75")
        expect(page.locator("#supermerger_mbw_slider_IN00 input[type=number]")).to_have_value("1")
        page.locator("#supermerger_mbw_read_alpha").click()  # the sliders back to GRAD_V
        expect(page.locator("#supermerger_mbw_slider_M00 input[type=number]")).to_have_value("0")

        # the sliders as a user preset, in the user presets file; Read fills the sliders from a list
        page.locator("#supermerger_preset_name textarea, #supermerger_preset_name input").first.fill("mine")
        page.locator("#supermerger_preset_save").click()
        expect(page.locator("#supermerger_preset_msg")).to_contain_text("Preset 'mine' saved in")
        from supermerger.arch.presets import user_presets_path

        assert f"mine\t{GRAD_V}\n" in user_presets_path().read_text(encoding="utf-8")
        beta = page.locator("#supermerger_mbw_beta textarea")
        beta.fill(",".join(["0.25"] * 25 + ["0.75"]))
        page.locator("#supermerger_mbw_read_beta").click()
        expect(page.locator("#supermerger_mbw_slider_OUT11 input[type=number]")).to_have_value("0.75")
        expect(page.locator("#supermerger_mbw_slider_IN00 input[type=number]")).to_have_value("0.25")
        page.locator("#supermerger_mbw_read_alpha").click()  # back to GRAD_V for the merge
        expect(page.locator("#supermerger_mbw_slider_OUT11 input[type=number]")).to_have_value("1")

        page.get_by_text("Elemental merge", exact=True).click()
        elemental = page.locator("#supermerger_elemental textarea")
        check = page.locator("#supermerger_elemental_check textarea")
        elemental.fill("OUT03:attn2:0.2")
        # SD1 OUT03 has one transformer block: attn2's to_q, to_k, to_v, to_out.0 weight and bias
        expect(check).to_have_value(re.compile(r"#1 'OUT03:attn2:0\.2': OUT03, matches 5 keys, decides 5"),
                                    timeout=30_000)

        page.locator("#supermerger_merge_gen").click()
        expect(page.locator("#supermerger_gallery img").first).to_be_visible(timeout=90_000)
        status = page.locator("#supermerger_status textarea")
        expect(status).to_have_value(re.compile(r"· ID \d+"), timeout=10_000)
        merge_id = int(re.search(r"· ID (\d+)", status.input_value()).group(1))
        info = page.locator("#supermerger_infotext textarea").input_value()
        assert f" ID {merge_id}," in info and "Size: 128x128" in info

        # the ID shown is the history record of this merge, with the recipe the page built
        record = history.get(merge_id).recipe()
        assert record.mbw_alpha == GRAD_V
        assert record.elemental == "OUT03:attn2:0.2"
        assert record.model_a.endswith("demoA.safetensors")

        # a batch of two with seed 7: clicking the second image shows its own infotext (seed 8)
        for elem_id, value in (("supermerger_batch_size", "2"), ("supermerger_seed", "7")):
            box = page.locator(f"#{elem_id} input").first  # the number box (a slider also has a range)
            box.fill(value)
            box.press("Tab")
        page.locator("#supermerger_gen").click()
        infotext = page.locator("#supermerger_infotext textarea")
        expect(infotext).to_have_value(re.compile(r"Seed: 7,"), timeout=60_000)
        thumbs = page.locator("#supermerger_gallery img")
        expect(thumbs).to_have_count(2, timeout=10_000)
        thumbs.nth(1).click()
        expect(infotext).to_have_value(re.compile(rf"Seed: 8, .* ID {merge_id},"), timeout=10_000)

        # Ctrl+Enter inside the tab (javascript/supermerger.js) is Merge & Gen: it merges and generates again;
        # the unchanged recipe is the same merge, so it keeps its history record and ID
        page.locator("#supermerger_prompt textarea").press("Control+Enter")
        expect(status).to_have_value(re.compile(rf"· ID {merge_id}\nMerged in (.|\n)*00003-7\.png"), timeout=60_000)
        assert history.get(-1).id == merge_id

        elemental.fill("OUT03:attn2")
        expect(check).to_have_value(re.compile(r"^Error: Elemental entry 1 \('OUT03:attn2', line 1\) has 1 ':'"),
                                    timeout=30_000)
        elemental.fill("OUT03 IN99:attn2:0.5")
        expect(check).to_have_value(re.compile(r"^Error: Unknown block ID 'IN99' in elemental entry 1"),
                                    timeout=30_000)
        # an SDXL model A: its 20 block sliders (no IN09-IN11, OUT09-OUT11), XL-sized presets
        pick(page, "supermerger_model_a", "demoXL_A.safetensors")
        expect(page.locator("#supermerger_mbw_arch")).to_contain_text("SDXL (20 blocks, from model A)")
        expect(page.locator("#supermerger_mbw_slider_IN09")).to_be_hidden()
        expect(page.locator("#supermerger_mbw_slider_OUT08")).to_be_visible()
        page.locator("#supermerger_mbw_set_beta").click()
        expect(page.locator("#supermerger_mbw_beta textarea")).to_have_value(
            ",".join(v for b, v in zip(BLOCKS_26, GRAD_V.split(",")) if b not in XL_MISSING))
        assert "Traceback" not in page.content()
