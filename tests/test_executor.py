"""The streaming executor's paths: in-place merges into a live state dict, the fused weight sum,
the GPU (staged) code run on the CPU, and the read/compute/write pipeline."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import supermerger
from supermerger import Recipe
from supermerger.api import plan_merge
from supermerger.errors import SuperMergerError
from supermerger.merge import executor
from supermerger.merge.executor import execute, fused_lerp_is_exact, intra_op_threads

from helpers import load


def _paths(models, arch="sd1", a="A"):
    return dict(model_a=str(models[(arch, a)]), model_b=str(models[(arch, "B")]), model_c=str(models[(arch, "C")]))


def _lerp_ref(A, B, alpha):
    """Independent reference: float32 lerp, one rounding to A's dtype; non-merged keys from A."""
    out = {}
    for k, a in A.items():
        if a.is_floating_point() and "model" in k and ("weight" in k or "bias" in k) and k in B:
            out[k] = torch.lerp(a.float(), B[k].float(), alpha).to(a.dtype)
        else:
            out[k] = a
    return out


def _bits_equal(x, y) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(-1).view(torch.uint8),
                                                                     y.view(-1).view(torch.uint8))


@pytest.mark.parametrize("a", ["A", "Abf16", "A32"])
def test_weight_sum_file_is_bit_identical_to_float32_lerp(models, tmp_path, a):
    A, B = load(models[("sd1", a)]), load(models[("sd1", "B")])
    out = tmp_path / "ws.safetensors"
    supermerger.merge(Recipe(alpha=0.3, **_paths(models, a=a)), output=out)
    got = load_file(str(out))
    ref = _lerp_ref(A, B, 0.3)
    assert set(got) == set(ref)
    for k in ref:
        assert _bits_equal(got[k], ref[k]), k


def test_fused_lerp_checked_exact_on_cpu():
    assert fused_lerp_is_exact(torch.device("cpu"), torch.float16)
    assert fused_lerp_is_exact(torch.device("cpu"), torch.bfloat16)
    assert not fused_lerp_is_exact(torch.device("cpu"), torch.int64)


def test_fused_and_windowed_paths_agree(models, monkeypatch):
    r = Recipe(alpha=0.37, **_paths(models))
    fused = supermerger.merge(r).state_dict
    monkeypatch.setattr(executor.Computer, "_can_fuse", lambda self, *a: False)
    windowed = supermerger.merge(r).state_dict
    for k in fused:
        assert _bits_equal(fused[k], windowed[k]), k


@pytest.mark.parametrize("recipe", [
    dict(alpha=0.3),
    dict(mode="add_difference", alpha=0.7, mbw_alpha="GRAD_V", adjust="1,0,0,0.5,0,0,0,0"),
    dict(mode="sum_twice", alpha=0.4, beta=0.3, elemental="OUT05:attn2:0.25"),
    dict(mode="add_difference", calcmode="trainDifference", alpha=1.0),
    dict(calcmode="cosineA", alpha=0.5),  # whole tensors, with a statistics pass
])
def test_into_equals_a_new_merge_and_reuses_the_tensors(models, recipe):
    r = Recipe(**_paths(models), **recipe)
    expected = supermerger.merge(r).state_dict
    live = {k: torch.full_like(v, 7) for k, v in load(models[("sd1", "A")]).items()}
    before = {k: (id(v), v.data_ptr()) for k, v in live.items()}
    res = supermerger.merge(r, into=live)
    assert res.state_dict is live
    assert {k: (id(v), v.data_ptr()) for k, v in live.items()} == before
    for k in expected:
        assert _bits_equal(live[k], expected[k]), k


def test_into_allocates_nothing_model_sized(models, monkeypatch):
    A, B = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    live = {k: v.clone() for k, v in A.items()}
    largest = max(v.numel() for v in A.values())
    sizes = []
    for name in ("empty", "empty_like", "zeros", "clone"):
        real = getattr(torch, name)

        def spy(*a, _real=real, **k):
            t = _real(*a, **k)
            sizes.append(t.numel())
            return t
        monkeypatch.setattr(torch, name, spy)
    supermerger.merge(Recipe(alpha=0.3), models={"A": A, "B": B}, into=live)
    monkeypatch.undo()
    assert not [n for n in sizes if n >= largest]
    ref = _lerp_ref(A, B, 0.3)
    for k in ref:
        assert _bits_equal(live[k], ref[k]), k


def test_into_the_model_a_dict_itself(models):
    """A live model merged with B in place (A's own tensors are both input and output)."""
    A, B = load(models[("sd1", "A")]), load(models[("sd1", "B")])
    ref = _lerp_ref(A, B, 0.25)
    live = {k: v.clone() for k, v in A.items()}
    supermerger.merge(Recipe(alpha=0.25), models={"A": live, "B": B}, into=live)
    for k in ref:
        assert _bits_equal(live[k], ref[k]), k


def test_into_refuses_a_state_dict_that_does_not_fit(models):
    live = {k: v.clone() for k, v in load(models[("sd1", "A")]).items()}
    key = next(iter(live))
    del live[key]
    snapshot = {k: v.clone() for k, v in live.items()}
    with pytest.raises(SuperMergerError, match="does not fit"):
        supermerger.merge(Recipe(**_paths(models)), into=live)
    assert all(torch.equal(live[k], snapshot[k]) for k in live)  # nothing was written
    with pytest.raises(SuperMergerError, match="not both"):
        supermerger.merge(Recipe(**_paths(models)), into=live, output="x.safetensors")


@pytest.mark.parametrize("recipe", [
    dict(alpha=0.3),
    dict(mode="add_difference", alpha=0.7, adjust="1,0,0,0.5,0,0,0,0"),
    dict(calcmode="cosineB", alpha=0.5),
])
@pytest.mark.parametrize("sink", ["file", "memory", "into"])
def test_staged_gpu_path_on_cpu_matches(models, tmp_path, recipe, sink):
    """device="cuda" runs the staged code (device buffers, two banks, deferred hand-over); here the
    same code runs on the CPU, with chunks small enough that the banks alternate many times."""
    r = Recipe(**_paths(models), **recipe)
    expected = supermerger.merge(r).state_dict
    plan = plan_merge(r)
    try:
        if sink == "file":
            from supermerger.io.writer import SafetensorsWriter

            out = tmp_path / "staged.safetensors"
            with SafetensorsWriter(out, [(t.key, t.dtype, t.shape) for t in plan.tasks], {}) as w:
                execute(plan, "file", writer=w, staged=True, chunk_elems=1 << 14)
            got = load_file(str(out))
        elif sink == "memory":
            got = execute(plan, "memory", staged=True, chunk_elems=1 << 14)
        else:
            got = {k: torch.zeros_like(v) for k, v in expected.items()}
            execute(plan, "into", target=got, staged=True, chunk_elems=1 << 14)
    finally:
        for s in plan.sources.values():
            s.close()
    for k in expected:
        assert _bits_equal(got[k], expected[k]), k


@pytest.mark.parametrize("chunk, window", [(1 << 12, 1 << 10), (1 << 21, 1 << 18), (4097, 1000)])
def test_chunk_and_window_sizes_do_not_change_the_result(models, chunk, window):
    r = Recipe(mode="add_difference", alpha=0.6, **_paths(models))
    expected = supermerger.merge(r).state_dict
    plan = plan_merge(r)
    got = execute(plan, "memory", chunk_elems=chunk, window=window)
    for s in plan.sources.values():
        s.close()
    for k in expected:
        assert _bits_equal(got[k], expected[k]), k


def test_overwriting_an_existing_output_releases_and_replaces_it(models, tmp_path, monkeypatch):
    from supermerger.io import writer

    monkeypatch.setattr(writer, "RELEASE_AHEAD", 4096)  # many release steps on a tiny file
    out = tmp_path / "m.safetensors"
    r = Recipe(alpha=0.2, **_paths(models))
    supermerger.merge(r, output=out)
    first = out.read_bytes()
    supermerger.merge(r.replace(alpha=0.8), output=out, overwrite=True)
    assert out.read_bytes() != first
    ref = _lerp_ref(load(models[("sd1", "A")]), load(models[("sd1", "B")]), 0.8)
    got = load_file(str(out))
    assert all(_bits_equal(got[k], ref[k]) for k in ref)


@pytest.mark.parametrize("method", ["view", "read_bytes"])
def test_read_error_is_reported_not_hung(models, tmp_path, monkeypatch, method):
    from supermerger.io import sources

    calls = {"n": 0}
    real = getattr(sources.SafetensorsSource, method)

    def flaky(self, *a):
        calls["n"] += 1
        if calls["n"] == 30:
            raise sources.ModelFileError("disk went away")
        return real(self, *a)
    monkeypatch.setattr(sources.SafetensorsSource, method, flaky)
    if method == "read_bytes":
        monkeypatch.setattr(sources.SafetensorsSource, "mapped", False, raising=False)
        monkeypatch.setattr(sources.SafetensorsSource, "__init__", _unmapped_init(sources.SafetensorsSource.__init__))
    out = tmp_path / "x.safetensors"
    with pytest.raises(SuperMergerError, match="disk went away"):
        supermerger.merge(Recipe(**_paths(models)), output=out)
    assert not out.exists()


def _unmapped_init(real):
    def init(self, *a, **k):
        real(self, *a, **k)
        self.mapped = False
    return init


def test_mapped_and_read_inputs_give_the_same_file(models, tmp_path):
    from supermerger.io.sources import SafetensorsSource

    outs = []
    for mapped in (True, False):
        srcs = {k: SafetensorsSource(models[("sd1", k)], mapped=mapped) for k in "ABC"}
        out = tmp_path / f"m{mapped}.safetensors"
        supermerger.merge(Recipe(mode="add_difference", alpha=0.6), models=srcs, output=out)
        outs.append(load_file(str(out)))
    assert outs[0].keys() == outs[1].keys() and all(_bits_equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_input_truncated_during_the_merge_is_a_clean_error(models, tmp_path):
    import shutil

    a = tmp_path / "A.safetensors"
    shutil.copy(models[("sd1", "A")], a)
    plan = plan_merge(Recipe(model_a=str(a), model_b=str(models[("sd1", "B")])))
    with open(a, "r+b") as f:  # another program cuts the file short after we planned
        f.truncate(a.stat().st_size // 2)
    try:
        with pytest.raises(SuperMergerError, match="ended early"):
            execute(plan, "memory")
    finally:
        for s in plan.sources.values():
            s.close()


def test_threads_setting_is_restored(models):
    before = torch.get_num_threads()
    with intra_op_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    supermerger.merge(Recipe(**_paths(models)))
    assert torch.get_num_threads() == before
