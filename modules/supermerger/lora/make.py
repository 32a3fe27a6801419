"""Make a LoRA from two checkpoints: ΔW = α·A − β·B per module, factored by SVD (spec §10.5).

A is the tuned model, B the original. The modules are those a LoRA trains (U-Net transformers
and the text encoders' attention / MLP), plus the ResBlock and down/upsampling layers when a
``conv_dim`` is given (a LoCon). The text encoders are left out when they are the same in both
models (max |ΔW| ≤ 0.1, kohya's rule). Checkpoints are read key by key, never whole.
"""

from __future__ import annotations

import datetime
import json
import time
from pathlib import Path
from typing import Callable, Mapping

from .. import arch as archmod
from ..errors import ArchitectureError, RecipeError
from ..io.atomic import check_not_an_input
from ..io.sources import DictSource, Source, open_model
from .keymap import Target, keymap_from
from .merge_loras import LoraResult
from .save import check_save_options, put_module, save_lora
from .svd import check_method, factorize

TEXT_ENCODER_MIN_DIFF = 0.1
BASE_MODEL_VERSION = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}


def _open(value, label: str) -> Source:
    if isinstance(value, Source):
        return value
    if isinstance(value, Mapping):
        return DictSource(value, name=f"model_{label}")
    return open_model(value)


def make_lora(model_a, model_b, output=None, *, alpha: float = 1.0, beta: float = 1.0, dim: int = 128,
              conv_dim: int | None = None, svd: str = "full", seed: int = 0, clamp_quantile: float | None = 0.99,
              precision: str = "fp16", device: str = "cpu", overwrite: bool = False,
              text_encoder_min_diff: float = TEXT_ENCODER_MIN_DIFF,
              progress: Callable[[int, int], None] | None = None) -> LoraResult:
    """A LoRA (or LoCon, with ``conv_dim``) approximating α·A − β·B at rank ``dim``."""
    import torch

    t0 = time.perf_counter()
    for name, value in (("dim", dim), ("conv_dim", conv_dim)):
        if value is not None and int(value) < 1:
            raise RecipeError(f"{name} must be at least 1 (got {value}).")
    check_method(svd)
    check_save_options(output, overwrite, precision)
    a_src = _open(model_a, "A")
    try:
        b_src = _open(model_b, "B")
    except BaseException:
        a_src.close()
        raise
    try:
        if output is not None:
            check_not_an_input(output, [("model A", a_src.path), ("model B", b_src.path)])
        shapes = {k: v.shape for k, v in a_src.tensors.items()}
        arch = archmod.detect(a_src.tensors, shapes, a_src.name)
        arch_b = archmod.detect(b_src.tensors, {k: v.shape for k, v in b_src.tensors.items()}, b_src.name)
        if arch_b.id != arch.id:
            raise ArchitectureError(f"Model A ({a_src.name}) is {arch.label} but model B ({b_src.name}) is "
                                    f"{arch_b.label}; a LoRA is made from two models of one family.")
        kinds = {"transformer", "text"} | ({"conv"} if conv_dim else set())
        targets = [t for t in keymap_from(arch, shapes).targets if t.kind in kinds]
        for t in targets:
            info = b_src.tensors.get(t.key)
            if info is None or info.shape != a_src.tensors[t.key].shape:
                raise ArchitectureError(f"Model B ({b_src.name}) has no weight {t.key} of shape "
                                        f"{list(a_src.tensors[t.key].shape)}; the models do not match.")
        by_key: dict[str, list[Target]] = {}
        for t in targets:
            by_key.setdefault(t.key, []).append(t)

        def diff(key: str):
            a = a_src.tensor(key).to(device=device, dtype=torch.float32, copy=True)  # never the caller's tensor
            b = b_src.tensor(key).to(device=device, dtype=torch.float32)
            return a.mul_(alpha).sub_(b, alpha=beta)

        notices = []
        text_keys = [k for k, ts in by_key.items() if ts[0].kind == "text"]
        te_diff = 0.0
        for key in text_keys:
            te_diff = max(te_diff, float(diff(key).abs().max()))
            if te_diff > text_encoder_min_diff:
                break
        if text_keys and te_diff <= text_encoder_min_diff:
            notices.append(f"Text encoder is the same (max |diff| {te_diff:.3g} <= {text_encoder_min_diff}): "
                           "U-Net only.")
            by_key = {k: ts for k, ts in by_key.items() if ts[0].kind != "text"}
        tensors: dict = {}
        total = sum(len(ts) for ts in by_key.values())
        done = 0
        for key, ts in by_key.items():
            d = diff(key)
            for t in ts:
                part = d if t.rows is None else d[t.rows[0]:t.rows[1]]
                is_3x3 = part.ndim == 4 and tuple(part.shape[2:]) != (1, 1)
                rank = conv_dim if is_3x3 and conv_dim else dim
                up, down = factorize(part, int(rank), svd, seed, clamp_quantile)
                put_module(tensors, t.name, up.cpu(), down.cpu(), up.shape[1])
                done += 1
                if progress is not None:
                    progress(done, total)
        name = Path(output).stem if output else f"lora_{a_src.name}-{b_src.name}"
        meta = _metadata(arch, name, a_src.name, b_src.name, alpha, beta, dim, conv_dim, svd)
        result = LoraResult(arch, "make", tensors, notices=notices)
        if output is not None:
            result.path, result.metadata = save_lora(tensors, output, meta, precision, overwrite)
        else:
            result.metadata = meta
    finally:
        a_src.close()
        b_src.close()
    result.seconds = time.perf_counter() - t0
    return result


def _metadata(arch, title: str, a: str, b: str, alpha: float, beta: float, dim: int, conv_dim: int | None,
              svd: str) -> dict[str, str]:
    args = {"conv_dim": str(conv_dim), "conv_alpha": str(conv_dim)} if conv_dim else {}
    return {
        "ss_v2": str(arch.id == "sd2"),
        "ss_base_model_version": BASE_MODEL_VERSION[arch.id],
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(dim),
        "ss_network_args": json.dumps(args),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{arch.modelspec_architecture}/lora",
        "modelspec.title": title,
        "modelspec.date": datetime.date.today().isoformat(),
        "supermerger_make_lora": json.dumps({"model_a": a, "model_b": b, "alpha": alpha, "beta": beta, "dim": dim,
                                             "conv_dim": conv_dim, "svd": svd}),
    }
