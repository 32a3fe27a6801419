"""The Merge tab's actions (Merge, Gen, Merge & Gen, Stop) on a small in-memory host: status lines,
errors as one readable line, the Stop flag, the history ID in the status and the infotext."""

from __future__ import annotations

import pytest

from supermerger.hosts.base import GenParams, Generated, Host
from supermerger.ui import forms

pytest.importorskip("gradio")


class MemoryHost(Host):
    """Keeps the merged state dict; an "image" is the mean of one U-Net weight (so a test can check it)."""

    name = "memory"
    KEY = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight"

    def __init__(self, files):
        self.files = files
        self.live = None
        self._name = None
        self.infotext = {}

    def list_checkpoints(self):
        return list(self.files)

    def checkpoint_path(self, name):
        return str(self.files[name])

    def load_state_dict(self, state_dict, name, *, recipe=None, infotext=None):
        self.live, self._name, self.infotext = dict(state_dict), name, dict(infotext or {})

    def set_merge_fields(self, fields):
        self.infotext = dict(fields)

    @property
    def model_name(self):
        return self._name

    def generate(self, params: GenParams) -> Generated:
        if self.live is None:
            from supermerger.errors import SuperMergerError

            raise SuperMergerError("No model is loaded.", "Merge (or load) a model before generating.")
        value = float(self.live[self.KEY].float().mean())
        info = f"{params.prompt}\nSteps: {params.steps}, Model: {self.infotext.get('Model', self._name)}"
        return Generated([value], [info], [params.seed])

    def unload(self):
        self.live = None


@pytest.fixture
def ctx(models):
    from supermerger.ui.context import UIContext

    files = {"A.safetensors": models[("sd1", "A")], "B.safetensors": models[("sd1", "B")]}
    return UIContext(MemoryHost(files))


def form(**changes):
    values = dict(forms.MERGE_FIELDS, model_a="A.safetensors", model_b="B.safetensors")
    values.update(changes)
    return [values[k] for k in forms.MERGE_FIELDS]


def gen(**changes):
    values = {name: getattr(GenParams(prompt="cat", seed=5, steps=3), name) for name in forms.GEN_FIELDS}
    values.update(changes)
    return [values[k] for k in forms.GEN_FIELDS]


def test_merge_and_gen_status_and_infotext(ctx, models):
    from helpers import lerp, load

    from supermerger import history
    from supermerger.ui.actions import run_action

    images, info, status = run_action(ctx, False, True, form(), gen())
    assert status == "No merged model loaded.\nError: No model is loaded. Merge (or load) a model before generating."
    reports = []
    images, info, status = run_action(ctx, True, True, form(alpha=0.3), gen(),
                                      progress=lambda f, desc="": reports.append(f))
    hid = ctx.last_result.history_id
    first, second = status.splitlines()[:2]
    assert first == f"Current model: {ctx.host.model_name} · ID {hid}" and second.startswith("Merged in")
    assert reports and reports[-1] == 1.0 and reports == sorted(reports)
    key = MemoryHost.KEY
    expected = lerp(load(models[("sd1", "A")])[key], load(models[("sd1", "B")])[key], 0.3)
    assert images == [(pytest.approx(float(expected.mean()), rel=1e-3), "seed 5")]
    assert info == f"cat\nSteps: 3, Model: {ctx.host.model_name} ID {hid}"
    assert history.get(hid).recipe().alpha == 0.3


def test_errors_are_one_readable_line(ctx):
    from supermerger.ui.actions import run_action

    _, _, status = run_action(ctx, True, False, form(use_mbw=True, mbw_alpha="0.5,0.5"), gen())
    assert status.splitlines()[-1].startswith("Error: Weights alpha have 2 values, but SD1.x needs 26")
    _, _, status = run_action(ctx, True, False, form(elemental="IN99::1"), gen())
    assert status.splitlines()[-1].startswith("Error: Unknown block ID 'IN99' in elemental entry 1")
    _, _, status = run_action(ctx, True, True, form(), gen(steps=0))
    assert status.splitlines()[-1] == ("Error: Steps, batch size and batch count must be at least 1, width and "
                                       "height at least 8.")
    assert "Traceback" not in status


def test_stop_interrupts_a_merge(ctx):
    from supermerger.ui.actions import run_action

    ctx.stop.set()  # a Stop pressed before the merge began does not stop it: the flag is cleared at start
    run_action(ctx, True, False, form(alpha=0.2), gen())
    assert ctx.host.model_name is not None and not ctx.stop.is_set()
    before = ctx.host.model_name

    def press_stop(fraction, desc=""):
        ctx.stop.set()

    _, _, status = run_action(ctx, True, False, form(alpha=0.7), gen(), progress=press_stop)
    assert status.splitlines()[-1] == "Error: The merge was stopped; nothing was written."
    assert ctx.host.model_name == before  # the live model is still the previous merge


def test_generated_images_are_saved_with_their_infotext(models, tmp_path):
    from PIL import Image

    from supermerger.ui.actions import run_action
    from supermerger.ui.context import UIContext

    class ImageHost(MemoryHost):
        def generate(self, params):
            out = super().generate(params)
            level = int(round(255 * min(max(out.images[0] + 0.5, 0.0), 1.0)))
            images = [Image.new("RGB", (8, 8), (level, k, 0)) for k in range(2)]
            return Generated(images, [out.infotexts[0], out.infotexts[0] + " (2)"], [params.seed, params.seed + 1])

    files = {"A.safetensors": models[("sd1", "A")], "B.safetensors": models[("sd1", "B")]}
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "00007-1.png").write_bytes(b"")  # an earlier image: numbering goes on from it
    ctx = UIContext(ImageHost(files), images_dir=folder)
    _, info, status = run_action(ctx, True, True, form(alpha=0.3), gen(seed=11))
    assert status.splitlines()[-1] == f"Images saved in {folder} (00008-11.png ... 00009-12.png)."
    saved = Image.open(folder / "00008-11.png")
    assert saved.info["parameters"] == info and info.startswith("cat\nSteps: 3, Model: ")
    assert Image.open(folder / "00009-12.png").getpixel((0, 0))[1] == 1
    assert Image.open(folder / "00009-12.png").info["parameters"] == info + " (2)"

    # "draw the merge ID on the images": a white label top left on the shown and the saved images
    images, _, status = run_action(ctx, False, True, form(), gen(seed=11), draw_id=True)
    labelled = images[0][0]
    assert labelled.getpixel((0, 0)) == (255, 255, 255) and labelled.size == (8, 8)
    assert status.splitlines()[-1].endswith("(00010-11.png ... 00011-12.png).")
    assert Image.open(folder / "00010-11.png").getpixel((0, 0)) == (255, 255, 255)
    plain, _, _ = run_action(ctx, False, True, form(), gen(seed=11))
    assert plain[0][0].getpixel((0, 0)) != (255, 255, 255)
