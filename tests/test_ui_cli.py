"""`supermerger ui`: where it listens, which models it offers, and its errors."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio")


@pytest.fixture
def launched(monkeypatch):
    from supermerger.ui import app

    calls = []
    monkeypatch.setattr(app, "launch", lambda blocks, **kw: calls.append((blocks, kw)))
    return calls


def test_ui_binds_localhost_unless_listen(launched, models, tmp_path):
    import shutil

    from supermerger.cli import main

    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(models[("sd1", "A")], folder / "mine.safetensors")
    assert main(["ui", "--models-dir", str(folder), "--port", "7999"]) == 0
    assert launched[-1][1] == {"host": "127.0.0.1", "port": 7999}
    assert main(["ui", "--models-dir", str(folder), "--listen"]) == 0
    assert launched[-1][1] == {"host": "0.0.0.0", "port": None}


def test_ui_models_folder_or_demo(tmp_path, _isolated_data_dir):
    from supermerger.errors import SuperMergerError
    from supermerger.ui.standalone import DEMO_PARAMS, make_context

    ctx = make_context()
    assert ctx.demo and ctx.host.list_checkpoints() == ["demoA.safetensors", "demoB.safetensors",
                                                        "demoXL_A.safetensors", "demoXL_B.safetensors"]
    assert ctx.host.models_dir == _isolated_data_dir / "demo"
    assert (ctx.gen_defaults.width, ctx.gen_defaults.steps) == (DEMO_PARAMS["width"], DEMO_PARAMS["steps"])
    with pytest.raises(SuperMergerError, match="does not exist"):
        make_context(tmp_path / "nowhere")
    ctx = make_context(tmp_path)
    assert not ctx.demo and ctx.host.list_checkpoints() == [] and ctx.output_dir == tmp_path


def test_ui_missing_folder_is_an_error_message(capsys):
    from supermerger.cli import main

    assert main(["ui", "--models-dir", "/no/such/folder"]) == 2
    assert "error: Models folder '/no/such/folder' does not exist." in capsys.readouterr().err


def test_ui_without_gradio_says_what_to_install(monkeypatch, capsys):
    import importlib.util

    from supermerger.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a))
    assert main(["ui"]) == 2
    err = capsys.readouterr().err
    assert "error: The UI needs Gradio, which is not installed." in err and 'pip install "gradio>=4"' in err
