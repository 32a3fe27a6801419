"""SuperMerger inside a real AUTOMATIC1111 v1.10.1, driven as a user would: the WebUI's HTTP API and its
page in headless chromium (Playwright). Tiny SD1 checkpoints (``conftest.a1111``); the tests share one
server and one page and run in file order (each leaves the state the next one starts from).

Every test ends with ``host.assert_clean_console()`` (no traceback) and no uncaught JavaScript error.
The full-size memory test (``test_memory_full_size_sd1``) is marked ``fullsize``; it starts its own
A1111 on two full-size SD1.5 layouts.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import stat
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from browser import chromium  # noqa: E402

pytestmark = pytest.mark.skipif(chromium() is None, reason="no chromium for the live A1111 page")

PROMPT = "a cat"
GEN = {"prompt": PROMPT, "seed": 1, "steps": 2, "width": 64, "height": 64, "cfg_scale": 7, "sampler_name": "Euler"}
TIMEOUT = 180_000  # ms, for anything that merges or generates


# -- the page -----------------------------------------------------------------------------------------
class Page:
    """The WebUI's page, with the uncaught JavaScript errors it raised."""

    def __init__(self, page):
        self.page, self.errors = page, []
        page.on("pageerror", lambda e: self.errors.append(f"{e}\n{e.stack or ''}"))

    def open(self, url: str) -> None:
        self.page.goto(url)
        self.page.wait_for_selector("#supermerger_merge", state="attached", timeout=120_000)
        self.page.wait_for_load_state("networkidle")

    def assert_no_js_errors(self) -> None:
        errors, self.errors[:] = list(self.errors), []
        assert not errors, "uncaught JavaScript errors:\n" + "\n".join(errors)

    def tab(self, label: str, top: bool = False) -> None:
        scope = "#tabs > .tab-nav" if top else "#tab_supermerger .tab-nav"
        self.page.locator(f"{scope} button", has_text=re.compile(f"^\\s*{re.escape(label)}\\s*$")).first.click()

    def pick(self, elem_id: str, option: str) -> None:
        """Choose the option whose text contains ``option`` in a Gradio 3 dropdown."""
        self.page.locator(f"#{elem_id} input").click()
        self.page.locator(f"#{elem_id} li[data-testid=dropdown-option]").filter(has_text=option).first.click()

    def choices(self, elem_id: str) -> list[str]:
        self.page.locator(f"#{elem_id} input").click()
        items = self.page.locator(f"#{elem_id} li[data-testid=dropdown-option]").all_inner_texts()
        self.page.locator(f"#{elem_id} input").blur()  # (Escape would run the WebUI's own Esc handler)
        return [t.replace("✓", "").strip() for t in items]

    def value(self, elem_id: str) -> str:
        return self.page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()

    def fill(self, elem_id: str, value) -> None:
        box = self.page.locator(f"#{elem_id} textarea, #{elem_id} input[type=number], #{elem_id} input").first
        box.fill(str(value))
        box.press("Tab")

    def click(self, elem_id: str) -> None:
        self.page.locator(f"#{elem_id}").click()

    def wait_value(self, elem_id: str, pattern: str, timeout: int = TIMEOUT) -> str:
        from playwright.sync_api import expect

        box = self.page.locator(f"#{elem_id} textarea").first
        expect(box).to_have_value(re.compile(pattern, re.S), timeout=timeout)
        return box.input_value()

    def accordion(self, elem_id: str) -> None:
        """Open the accordion ``elem_id`` (if it is closed)."""
        head = self.page.locator(f"#{elem_id} .label-wrap").first
        if "open" not in (head.get_attribute("class") or ""):
            head.click()


@pytest.fixture(scope="module")
def ui(a1111):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = Page(browser.new_page(viewport={"width": 1400, "height": 1000}))
            page.open(a1111.url)
            yield page
        finally:
            browser.close()


# -- helpers ------------------------------------------------------------------------------------------
def pixels(b64_or_bytes) -> bytes:
    from PIL import Image

    data = base64.b64decode(b64_or_bytes) if isinstance(b64_or_bytes, str) else b64_or_bytes
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB").tobytes()


def txt2img(host, **kw) -> tuple[bytes, str]:
    """(pixels, infotext) of the WebUI's own txt2img through its API."""
    r = host.api("/sdapi/v1/txt2img", {**GEN, "save_images": False, **kw})
    return pixels(r["images"][0]), json.loads(r["info"])["infotexts"][0]


def fields(infotext: str) -> dict[str, str]:
    from supermerger.hosts.infotext import parse_infotext

    return parse_infotext(infotext)[2]


def history_rows(host) -> list[dict]:
    with open(host.data_home / "mergehistory.csv", encoding="utf-8-sig", newline="") as f:
        return list(csv.DictReader(f))


def live_title(host) -> str:
    return host.options()["sd_model_checkpoint"]


def set_gen(ui: Page) -> None:
    """The tab's Gen section as GEN (what the API calls use)."""
    ui.fill("supermerger_prompt", PROMPT)
    ui.pick("supermerger_sampler", "Euler")
    # "Euler a" also contains "Euler": make sure the plain one is picked
    if ui.value("supermerger_sampler") != "Euler":
        ui.page.locator("#supermerger_sampler input").click()
        ui.page.locator('#supermerger_sampler li[data-value="Euler"]').click()
    for elem, key in (("supermerger_steps", "steps"), ("supermerger_width", "width"),
                      ("supermerger_height", "height"), ("supermerger_seed", "seed"), ("supermerger_cfg", "cfg_scale")):
        ui.fill(elem, GEN[key])


def gallery_pixels(ui: Page, host) -> bytes:
    src = ui.page.locator("#supermerger_gallery img").first.get_attribute("src")
    url = src if src.startswith("http") else host.url + "/" + src.lstrip("/")
    with urllib.request.urlopen(url) as r:
        return pixels(r.read())


def console_since(host, mark: int) -> str:
    return host.server.console(mark)


# -- the tests ----------------------------------------------------------------------------------------
def test_tab_and_sub_tabs_render_without_errors(a1111, ui):
    """Items 8: no uncaught JS error on load (the WebUI alone has none)."""
    ui.tab("SuperMerger", top=True)
    for label in ("Metadata", "Elements", "Reservation", "History", "IDs from images", "Weight Analysis", "LoRA",
                  "Merge"):
        ui.tab(label)
        time.sleep(0.3)
    assert ui.page.locator("#supermerger_merge_gen").is_visible()
    assert ui.value("supermerger_status").startswith("No merged model loaded.")
    ui.page.reload()
    ui.open(a1111.url)
    ui.assert_no_js_errors()
    a1111.assert_clean_console()


STATE: dict = {}


def test_merge_and_gen_hot_swaps_with_its_id(a1111, ui):
    host = a1111
    before_files = sorted(p.name for p in host.ckpt_dir.iterdir())
    a_pixels, a_info = txt2img(host)
    STATE["a_pixels"] = a_pixels
    ui.tab("SuperMerger", top=True)
    ui.tab("Merge")
    ui.pick("supermerger_model_a", "tinyA")
    ui.pick("supermerger_model_b", "tinyB")
    ui.fill("supermerger_alpha", 0.3)
    set_gen(ui)
    mark = host.server.mark()
    ui.click("supermerger_merge_gen")
    status = ui.wait_value("supermerger_status", r"Merged in")
    info = ui.wait_value("supermerger_infotext", r"Model: ")
    # no file written, nothing loaded from disk: the merge went into the live model
    assert sorted(p.name for p in host.ckpt_dir.iterdir()) == before_files
    assert "Loading weights" not in console_since(host, mark) and "Creating model" not in console_since(host, mark)
    rows = history_rows(host)
    hid = int(rows[-1]["ID"])
    assert rows[-1]["alpha"] == "0.3" and rows[-1]["model A"] == "tinyA" and rows[-1]["model B"] == "tinyB"
    stem = "tinyAx0.7+tinyBx0.3"  # the file "Save current merge" writes (spaces removed, spec §8.4)
    assert f"Current model: {stem} · ID {hid}" in status
    assert fields(info)["Model"] == f"{stem} ID {hid}"
    assert json.loads(fields(info)["SuperMerger recipe"])["alpha"] == 0.3
    # the WebUI's own txt2img uses the merge and names it with its ID (item 9)
    m_pixels, m_info = txt2img(host)
    assert m_pixels != a_pixels
    assert m_pixels == gallery_pixels(ui, host)  # the tab's Gen: same seed and parameters, same image
    assert fields(m_info)["Model"] == f"{stem} ID {hid}"
    # the WebUI's dropdown shows the merge as it shows a loaded model, listed (item 10)
    title = live_title(host)
    assert title.startswith(f"{stem} [")
    assert ui.value("setting_sd_model_checkpoint") == title
    assert title in ui.choices("setting_sd_model_checkpoint")
    STATE.update(hid=hid, stem=stem, merged=m_pixels, title=title)
    ui.assert_no_js_errors()
    host.assert_clean_console()


def test_reload_keeps_status_and_dropdown(a1111, ui):
    """Items 7 and 10: after a browser reload the status and the WebUI's dropdown still show the merge."""
    ui.open(a1111.url)
    ui.tab("SuperMerger", top=True)
    assert ui.value("supermerger_status").startswith(f"Current model: {STATE['stem']} · ID {STATE['hid']}")
    assert ui.value("setting_sd_model_checkpoint") == STATE["title"]
    choices = ui.choices("setting_sd_model_checkpoint")
    assert STATE["title"] in choices
    assert sum(1 for c in choices if not c.startswith("tiny") or "+" in c) == 1  # earlier merges are not listed
    ui.assert_no_js_errors()
    a1111.assert_clean_console()


def test_save_current_merge_equals_independent_sum_and_loads_as_checkpoint(a1111, ui):
    """Item 9 (name and hash of the file in the infotext), 11 (mode 0644), and the saved file's tensors."""
    import torch
    from safetensors.torch import load_file

    host = a1111
    ui.tab("Merge")
    ui.accordion("supermerger_save_accordion")
    ui.click("supermerger_save_current")
    status = ui.wait_value("supermerger_status", r"Merged model saved in")
    path = Path(re.search(r"Merged model saved in (.+)$", status, re.M).group(1).strip())
    assert path.parent == host.ckpt_dir and path.stem == STATE["stem"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as the WebUI's own files (0644)
    a = load_file(host.ckpt_dir / "tinyA.safetensors")
    b = load_file(host.ckpt_dir / "tinyB.safetensors")
    saved = load_file(path)
    unet = [k for k in saved if k.startswith("model.diffusion_model.") and k.endswith(".weight")]
    assert len(unet) > 100
    exact = total = 0
    for k in unet:
        # float32, then the saved precision; the engine's lerp may round the float32 value one ulp apart,
        # which the cast to fp16 almost always absorbs: one fp16 step at most, and nearly every value exact
        expected = ((1 - 0.3) * a[k].float() + 0.3 * b[k].float()).to(saved[k].dtype)
        assert saved[k].shape == expected.shape
        step = torch.finfo(saved[k].dtype).eps * expected.float().abs() + torch.finfo(saved[k].dtype).tiny
        assert ((saved[k].float() - expected.float()).abs() <= step).all(), k
        exact += int((saved[k] == expected).sum())
        total += expected.numel()
    assert exact / total > 0.99, f"{total - exact} of {total} values one step apart"
    assert not torch.equal(saved[unet[0]].float(), a[unet[0]].float())
    # images now name the file and carry its real hash, so PNG Info -> txt2img finds it
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    live_pixels, info = txt2img(host)
    assert live_pixels == STATE["merged"]
    assert fields(info)["Model hash"] == sha[:10] and fields(info)["Model"] == f"{path.stem} ID {STATE['hid']}"
    host.api("/sdapi/v1/refresh-checkpoints", {})
    found = [m for m in host.api("/sdapi/v1/sd-models") if m["sha256"] == sha or (m["hash"] or "") == sha[:10]]
    assert [m["filename"] for m in found] == [str(path)]
    # switching to another checkpoint loads it cleanly and the tab says so (item 7)
    host.options(sd_model_checkpoint="tinyC.safetensors")
    ui.page.reload()
    ui.open(host.url)
    ui.tab("SuperMerger", top=True)
    assert ui.value("supermerger_status").startswith("No merged model loaded. The live model is tinyC.safetensors")
    # ... and the saved merge loaded from disk as a checkpoint gives the live merge's pixels (a tiny model
    # needs its config beside it, as tinyA has; a full-size one would not)
    path.with_suffix(".yaml").write_text((host.ckpt_dir / "tinyA.yaml").read_text())
    mark = host.server.mark()
    host.options(sd_model_checkpoint=found[0]["title"])
    assert f"Loading weights [{sha[:10]}]" in console_since(host, mark)
    disk_pixels, _ = txt2img(host)
    assert disk_pixels == STATE["merged"]
    ui.assert_no_js_errors()
    host.assert_clean_console()


def test_other_checkpoint_forgets_the_merge(a1111, ui):
    """Item 7: after the user picks another checkpoint in the WebUI's dropdown, the tab's Gen carries that
    model's name and hash and no merge ID or recipe, and "Save current merge" refuses."""
    host = a1111
    ui.tab("Merge")
    set_gen(ui)  # (the page was reloaded)
    ui.pick("supermerger_model_a", "tinyA")
    ui.pick("supermerger_model_b", "tinyB")
    ui.fill("supermerger_alpha", 0.3)
    ui.click("supermerger_merge")  # a merge again (alpha 0.3) ...
    ui.wait_value("supermerger_status", r"Merged in")
    ui.pick("setting_sd_model_checkpoint", "tinyC")  # ... then the user's own choice
    deadline = time.monotonic() + 120
    while not live_title(host).startswith("tinyC") and time.monotonic() < deadline:
        time.sleep(0.5)
    host.wait_idle()
    assert live_title(host).startswith("tinyC")
    ui.click("supermerger_gen")
    info = ui.wait_value("supermerger_infotext", r"Model: tinyC")
    assert "ID " not in fields(info)["Model"] and "SuperMerger recipe" not in info
    c_hash = live_title(host).split("[")[1].rstrip("]")
    assert fields(info)["Model hash"] == c_hash
    status = ui.value("supermerger_status")
    assert status.startswith("No merged model loaded. The live model is tinyC.safetensors")
    ui.accordion("supermerger_save_accordion")
    ui.click("supermerger_save_current")
    assert "Nothing to save" in ui.wait_value("supermerger_status", r"Nothing to save|saved in")
    _, api_info = txt2img(host)
    assert fields(api_info)["Model"] == "tinyC"
    ui.assert_no_js_errors()
    host.assert_clean_console()


def merge_in_tab(ui: Page, host) -> tuple[str, bytes]:
    """Merge (a recipe new to the history) and wait until the status names the new record."""
    n = len(history_rows(host))
    ui.click("supermerger_merge")
    deadline = time.monotonic() + TIMEOUT / 1000
    while len(history_rows(host)) == n and time.monotonic() < deadline:
        time.sleep(0.3)
    hid = history_rows(host)[-1]["ID"]
    status = ui.wait_value("supermerger_status", rf"ID {hid}\b|Error")
    assert "Error" not in status, status
    return status, txt2img(host)[0]


def test_mbw_preset_elemental_and_calcmode(a1111, ui):
    host = a1111
    ui.tab("Merge")
    # MBW from a preset
    ui.accordion("supermerger_mbw_accordion")
    ui.page.locator("#supermerger_use_mbw input").check()
    ui.pick("supermerger_mbw_preset", "GRAD_V")
    ui.click("supermerger_mbw_set_alpha")
    weights = ui.wait_value("supermerger_mbw_alpha", r"^0,1,")
    _, mbw_pixels = merge_in_tab(ui, host)
    row = history_rows(host)[-1]
    assert row["weights alpha"].replace(" ", "") == weights.replace(" ", "")
    assert mbw_pixels not in (STATE["merged"], STATE["a_pixels"])
    ui.page.locator("#supermerger_use_mbw input").uncheck()
    # an elemental entry on top of alpha 0.3
    ui.accordion("supermerger_elemental_accordion")
    ui.fill("supermerger_elemental", "OUT11:out_layers:1")
    ui.wait_value("supermerger_elemental_check", r"OUT11")
    _, el_pixels = merge_in_tab(ui, host)
    assert history_rows(host)[-1]["elemental"] == "OUT11:out_layers:1"
    assert el_pixels != STATE["merged"]
    ui.fill("supermerger_elemental", "")
    # a calcmode
    ui.pick("supermerger_calcmode", "cosineA")
    _, cos_pixels = merge_in_tab(ui, host)
    assert history_rows(host)[-1]["calcmode"] == "cosineA"
    assert cos_pixels != STATE["merged"]
    ui.pick("supermerger_calcmode", "normal")
    ui.assert_no_js_errors()
    host.assert_clean_console()


def test_history_search_and_restore(a1111, ui):
    ui.tab("History")
    ui.fill("supermerger_history_query", "cosineA")
    ui.click("supermerger_history_search")
    ui.page.wait_for_selector("#supermerger_history_table td", timeout=30_000)
    table = ui.page.locator("#supermerger_history_table").inner_text()
    assert "cosineA" in table
    ui.fill("supermerger_history_id", STATE["hid"])
    ui.click("supermerger_history_restore")
    ui.wait_value("supermerger_history_message", r".+")
    ui.tab("Merge")
    assert float(ui.page.locator("#supermerger_alpha input[type=number]").input_value()) == 0.3
    assert ui.value("supermerger_calcmode") == "normal"
    ui.assert_no_js_errors()
    a1111.assert_clean_console()


def grids_dir(host) -> Path:
    opts = host.options()
    folder = opts.get("outdir_grids") or opts.get("outdir_txt2img_grids") or "outputs/txt2img-grids"
    return (host.tree / folder).resolve()


def test_xyz_plot_grid_lands_in_the_webui_outputs_and_reservation(a1111, ui):
    """Item 11: grids in the WebUI's txt2img-grids; item 7: the Merge tab's status follows the plot."""
    host = a1111
    folder = grids_dir(host)
    before = set(folder.glob("*.png")) if folder.exists() else set()
    ui.tab("Merge")
    set_gen(ui)
    ui.accordion("supermerger_xyz_accordion")
    ui.fill("supermerger_xyz_xvalues", "0.2,0.8")
    ui.click("supermerger_xyz_run")
    text = ui.wait_value("supermerger_xyz_status", r"XYZ plot (done|stopped)|Error")
    assert "XYZ plot done: 2 of 2 cells" in text, text
    grids = set(folder.glob("*.png")) - before
    assert grids, f"no grid in {folder}: {text}"
    ext = host.tree / "extensions" / "supermerger"
    assert not list(ext.rglob("*.png")) or all("outputs" not in str(p.relative_to(ext)) for p in ext.rglob("*.png"))
    status = ui.value("supermerger_status")
    assert "· ID" not in status  # the live model is the plot's last cell, not the tab's merge
    # a reservation, run from the Reservation tab
    ui.fill("supermerger_xyz_xvalues", "0.4,0.6")
    ui.click("supermerger_xyz_reserve")
    assert "Reserved" in ui.wait_value("supermerger_xyz_status", r"Reserved|Error")
    ui.tab("Reservation")
    ui.click("supermerger_queue_start")
    done = ui.wait_value("supermerger_queue_status", r"Reservation \d+: (finished|error|stopped)")
    assert re.search(r"Reservation \d+: finished", done), done
    assert len(set(folder.glob("*.png")) - before) >= 2
    ui.assert_no_js_errors()
    host.assert_clean_console()


LORA_MODULES = {  # kohya name -> the tiny SD1 weight it changes (ones that change a 64x64, 2-step image;
    # input_blocks.4's to_k and output_blocks.3's conv1 do not, even loaded from a file)
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj":
        "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
    "lora_unet_mid_block_attentions_0_proj_in": "model.diffusion_model.middle_block.1.proj_in.weight",
    "lora_unet_up_blocks_3_resnets_2_conv2": "model.diffusion_model.output_blocks.11.0.out_layers.3.weight",
}


def tiny_lora(path: Path) -> None:
    """A LoRA (kohya names, rank 4) on two tiny SD1 weights, strong enough to change an image."""
    import torch
    from safetensors.torch import save_file

    from supermerger.testing.synthetic import key_shapes

    shapes = dict(key_shapes("sd1", "tiny"))
    g = torch.Generator().manual_seed(5)
    lora = {}
    for name, key in LORA_MODULES.items():
        out, inn, *kernel = shapes[key]
        lora[f"{name}.lora_down.weight"] = torch.randn(4, inn, *kernel, generator=g)
        lora[f"{name}.lora_up.weight"] = torch.randn(out, 4, *([1, 1] if kernel else []), generator=g)
        lora[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(lora, str(path))


def test_lora_into_the_live_model(a1111, ui):
    host = a1111
    lora_dir = host.tree / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    tiny_lora(lora_dir / "tinylora.safetensors")
    host.options(sd_model_checkpoint="tinyA.safetensors")
    a_pixels, _ = txt2img(host)
    assert a_pixels == STATE["a_pixels"]
    ui.tab("LoRA")
    ui.pick("supermerger_lora_model_a", "tinyA")
    ui.fill("supermerger_lora_specs", "tinylora:1.5")
    ui.click("supermerger_lora_to_ckpt")
    msg = ui.wait_value("supermerger_lora_message", r"Loaded|Error")
    assert "as the live model" in msg and f"{len(LORA_MODULES)} modules" in msg, msg
    l_pixels, info = txt2img(host)
    assert l_pixels != a_pixels
    assert fields(info)["Model"].startswith("tinyA+tinylora")
    host.options(sd_model_checkpoint="tinyA.safetensors")  # leave a plain checkpoint loaded
    ui.assert_no_js_errors()
    host.assert_clean_console()
