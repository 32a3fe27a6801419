"""Stop during generation on the standalone host: the image in progress ends at its next step and
no further batch starts (the UI's Stop button calls ``host.interrupt()`` through ``ctx.request_stop``)."""

from __future__ import annotations

import pytest

pytest.importorskip("diffusers")


def test_stop_interrupts_generation(_isolated_data_dir):
    from supermerger.demo import demo_models
    from supermerger.hosts.base import GenParams
    from supermerger.hosts.diffusers_host import DiffusersHost
    from supermerger.merge.recipe import Recipe
    from supermerger.ui.context import UIContext

    a, b = demo_models("sd1")
    host = DiffusersHost(cache=False)
    host.merge_and_load(Recipe(model_a=a, model_b=b), history=False)
    ctx = UIContext(host)
    steps_run = []
    original = host._step_end

    def step_end(pipe, step, timestep, kwargs):
        steps_run.append(step)
        if step == 1:
            ctx.request_stop()  # what the Stop button does, pressed during the second step
        return original(pipe, step, timestep, kwargs)

    host._step_end = step_end
    out = host.generate(GenParams(prompt="x", seed=1, steps=30, width=64, height=64, batch_count=3))
    assert steps_run == [0, 1]  # 28 steps skipped
    assert len(out.images) == 1 and out.seeds == [1]  # batches 2 and 3 never started
    host._step_end = original
    reports = []
    host.generate(GenParams(prompt="x", seed=1, steps=2, width=64, height=64, batch_count=2,
                            extra={"progress": lambda done, total: reports.append((done, total))}))
    assert reports == [(0.5, 2), (1.0, 2), (1.5, 2), (2.0, 2)]  # per step, in passes of 2 steps
    steps_run.clear()
    host._step_end = lambda pipe, step, timestep, kwargs: (steps_run.append(step),
                                                           original(pipe, step, timestep, kwargs))[1]
    out = host.generate(GenParams(prompt="x", seed=1, steps=3, width=64, height=64, batch_count=2))
    assert steps_run == [0, 1, 2] * 2 and len(out.images) == 2  # the next run starts unstopped


def test_webui_interrupt_uses_the_webuis_state(monkeypatch):
    import sys
    import types

    from supermerger.hosts.webui import WebUIHost

    calls = []
    shared = types.SimpleNamespace(state=types.SimpleNamespace(interrupt=lambda: calls.append("interrupt")))
    package = types.ModuleType("modules")
    package.__path__ = []
    mods = {n: types.ModuleType("modules." + n) for n in ("devices", "processing", "sd_hijack", "sd_models",
                                                          "sd_vae")}
    mods["shared"] = shared
    monkeypatch.setitem(sys.modules, "modules", package)
    for name, mod in mods.items():
        setattr(package, name, mod)
        monkeypatch.setitem(sys.modules, "modules." + name, mod)
    WebUIHost().interrupt()
    assert calls == ["interrupt"]
