"""Fixtures of the live tests: a real AUTOMATIC1111 v1.10.1 and a real Forge, each built from the
snapshots in ``../shared/hosts/`` with SuperMerger installed from this checkout, started headless and
offline. Skipped, with the reason, when the snapshots are absent.

Each host runs once per test module (fixture ``a1111`` or ``forge``), so only one is up at a time; the
tests of a module share it and must leave it with a loaded checkpoint. The console is kept: ``host.assert_clean_console()`` fails on
any traceback or error line the extension could have caused.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/browser.py

import hostenv  # noqa: E402
import livemodels as models  # noqa: E402

# Lines that mean something went wrong in the host's console (beyond the snapshot's own known noise).
BAD = re.compile(r"Traceback \(most recent call last\)|^\*\*\* Error|Error running|Exception in|"
                 r"RuntimeError|TypeError|AttributeError|KeyError")
# Noise of the bare snapshots, seen without the extension (not ours; see ../shared/hosts/README.md).
KNOWN = re.compile(r"fatal: not a git repository")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/live/" in str(item.fspath):
            item.add_marker(pytest.mark.live)


def _folder():
    folder = hostenv.hosts_dir()
    if folder is None:
        pytest.skip("the host snapshots (../shared/hosts, or $SUPERMERGER_HOSTS_DIR) are not here: "
                    "no live A1111/Forge test")
    return folder


class LiveHost:
    def __init__(self, spec, tree, python, server, ckpt_dir, data_home, log_path):
        self.spec, self.tree, self.python, self.server = spec, tree, python, server
        self.ckpt_dir, self.data_home, self.log_path = ckpt_dir, data_home, log_path
        self.url = server.url
        self.checked = 0  # console lines already checked

    def api(self, *a, **kw):
        return self.server.api(*a, **kw)

    def bad_lines(self, since: int = 0) -> list[str]:
        return [line for line in self.server.lines[since:] if BAD.search(line) and not KNOWN.search(line)]

    def assert_clean_console(self) -> None:
        """No traceback or error in the console since the last check."""
        bad = self.bad_lines(self.checked)
        text = self.server.console(self.checked)
        self.checked = self.server.mark()
        assert not bad, f"{self.spec.key} console shows errors:\n" + text[-6000:]

    def txt2img(self, **kw):
        payload = {"prompt": "a cat", "seed": 1, "steps": 2, "width": 64, "height": 64, "cfg_scale": 7,
                   "sampler_name": "Euler", "save_images": False, **kw}
        return self.api("/sdapi/v1/txt2img", payload)

    def options(self, **kw):
        if kw:
            self.api("/sdapi/v1/options", kw)
        return self.api("/sdapi/v1/options")

    def wait_idle(self, timeout: float = 300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.api("/sdapi/v1/progress?skip_current_image=true").get("state", {}).get("job"):
                return
            time.sleep(0.5)


def _bring_up(key: str, tmp_path_factory, checkpoints) -> LiveHost:
    folder = _folder()
    spec = hostenv.SPECS[key]
    root = tmp_path_factory.mktemp(key)
    log_path = root / "console.log"
    with open(root / "setup.log", "w") as log:
        python = hostenv.build_venv(spec, folder, log=log)
        hf = hostenv.hf_home(python, folder, log=log)
        tree = hostenv.unpack(spec, folder, dest=root / "tree")
        hostenv.install_extension(tree, python, log=log)
    ckpt_dir = root / "models"
    checkpoints(tree, ckpt_dir, hf)
    data_home = root / "smhome"
    server = hostenv.start(spec, tree, python, hf, ckpt_dir=ckpt_dir, data_home=data_home, log_path=log_path)
    return LiveHost(spec, tree, python, server, ckpt_dir, data_home, log_path)


def a1111_checkpoints(tree: Path, ckpt_dir: Path, hf: Path) -> None:
    clip = models.tiny_clip_folder(ckpt_dir.parent, hf)
    yaml_text = models.tiny_sd1_yaml(tree, clip)
    for name, seed in (("tinyA", 1), ("tinyB", 2), ("tinyC", 3)):
        models.tiny_sd1(ckpt_dir, name, seed, yaml_text)


def forge_checkpoints(tree: Path, ckpt_dir: Path, hf: Path) -> None:
    for name, seed in (("fullA", 11), ("fullB", 12)):
        models.link_into(ckpt_dir, models.full_sd1(name, seed), f"{name}.safetensors")


@pytest.fixture(scope="module")
def a1111(tmp_path_factory):
    host = _bring_up("a1111", tmp_path_factory, a1111_checkpoints)
    yield host
    host.server.stop()


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    host = _bring_up("forge", tmp_path_factory, forge_checkpoints)
    yield host
    host.server.stop()
