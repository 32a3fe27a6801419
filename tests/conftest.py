"""Shared fixtures: tiny synthetic checkpoints with real key names, and an isolated data folder."""

from __future__ import annotations

import pytest
import torch

from supermerger import paths

# Tests compare many small tensors: on a 2-core machine shared with other work, torch's intra-op
# thread pool costs far more in wake-ups than it saves (measured: 13x slower checks with 2 threads).
torch.set_num_threads(1)
from supermerger.testing.synthetic import write_checkpoint


def pytest_collection_modifyitems(config, items):
    """The live tests (tests/live: real WebUIs, minutes each) run after every unit test, so the unit tests
    report first and the hosts' venvs, built in the background by .ci/run, are ready by then."""
    items.sort(key=lambda item: "live" in item.nodeid.split("/")[:2])


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("smhome")
    monkeypatch.setenv("SUPERMERGER_HOME", str(home))
    paths.set_data_dir(home)
    yield home
    paths.set_data_dir(None)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{(arch, label): path} for arch in sd1/sd2/sdxl and labels A, B, C (fp16), plus extras."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    for arch in ("sd1", "sd2", "sdxl"):
        for label, seed in (("A", 1), ("B", 2), ("C", 3)):
            out[(arch, label)] = write_checkpoint(root / f"{arch}_{label}.safetensors", arch, seed=seed)
    out[("sd1", "A32")] = write_checkpoint(root / "sd1_A32.safetensors", "sd1", seed=1, dtype="float32")
    out[("sd1", "Abf16")] = write_checkpoint(root / "sd1_Abf16.safetensors", "sd1", seed=1, dtype="bfloat16")
    out[("sd1", "inpaint")] = write_checkpoint(root / "sd1_inpaint.safetensors", "sd1", seed=4, in_channels=9)
    out[("sd1", "ckpt")] = write_checkpoint(root / "sd1_B.ckpt", "sd1", seed=2)
    return out


@pytest.fixture
def app_url():
    """The standalone app on the demo models, served on a free port: (url, its UIContext)."""
    from browser import serve_app

    with serve_app() as served:
        yield served


@pytest.fixture
def needs_vocabulary():
    """Skips a test that generates when the CLIP vocabulary (from open-clip-torch) is missing."""
    from supermerger.hosts import clip_tokenizer

    try:
        clip_tokenizer.find_bpe_file()
    except Exception:  # pragma: no cover
        pytest.skip("open-clip-torch (the CLIP vocabulary) is not installed: pip install --no-deps open-clip-torch")
