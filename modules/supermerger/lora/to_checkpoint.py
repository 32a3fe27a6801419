"""Merge LoRAs into a checkpoint: W + r·ΔW for every module, with block weights (spec §10.3).

Planned first from headers alone (which module lands on which key, at which ratio; unmatched
modules; shape checks), then streamed key by key: each weight is read, changed in float32 when a
LoRA touches it (fp16 / bf16 / fp8 checkpoints are cast back), and written through the engine's
atomic safetensors writer, or collected into a state dict. The result is linear in every ratio,
so ratios of any sign work and need not sum to anything.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .. import arch as archmod
from ..arch import Architecture
from ..errors import OutputError, RecipeError
from ..io.atomic import check_not_an_input, check_output_path
from ..io.sources import DictSource, Source, open_model, torch_dtype
from .blocks import LoraSpec, block_ratios, ratios_text
from .files import open_loras
from .formats import LoraFile, LoraMismatchError, LoraModule, fits, pads_channels
from .keymap import KeyMap, Target, keymap_from

DTYPES = {"fp16": "F16", "bf16": "BF16", "fp32": "F32"}


@dataclass
class Contribution:
    lora: int  # index into LoraPlan.loras
    module: LoraModule
    ratio: float
    target: Target
    pad: bool = False  # ΔW covers the first input channels only (inpainting conv_in)


@dataclass
class AppliedLora:
    spec: LoraSpec
    file: LoraFile
    ratios: dict[str, float]
    applied: int = 0
    unmatched: list[str] = field(default_factory=list)
    unsupported: list[tuple[str, str]] = field(default_factory=list)  # (module, type)

    @property
    def name(self) -> str:
        return self.file.name


@dataclass
class LoraPlan:
    source: Source
    arch: Architecture
    keymap: KeyMap
    loras: list[AppliedLora]
    by_key: dict[str, list[Contribution]]
    notices: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return "+".join([self.source.name] + [lo.name for lo in self.loras])

    def unmatched(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for i, lo in enumerate(self.loras):
            if lo.unmatched or lo.unsupported:
                name = lo.name if lo.name not in out else f"{lo.name} (#{i + 1})"  # one LoRA given twice
                out[name] = lo.unmatched + [f"{m} ({t})" for m, t in lo.unsupported]
        return out

    def changed_keys(self) -> list[str]:
        """The weights some LoRA changes (a module in a block at ratio 0 changes nothing)."""
        return [k for k, cs in self.by_key.items() if any(c.ratio != 0.0 for c in cs)]

    def summary_lines(self) -> list[str]:
        lines = [f"model        : {self.source.name} ({self.arch.label})"]
        for lo in self.loras:
            blocks = f", blocks {lo.spec.blocks}" if lo.spec.blocks else ""
            lines.append(f"LoRA         : {lo.name} ratio {lo.spec.ratio:g}{blocks}: {lo.applied} modules")
            if lo.spec.blocks:
                lines.append(f"  block ratios {ratios_text(lo.ratios, self.arch)}")
        for name, missing in self.unmatched().items():
            lines.append(f"not applied  : {name}: {len(missing)} modules not found in the model: "
                         + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
        lines.append(f"weights changed: {len(self.changed_keys())} of {len(self.source.tensors)} tensors")
        return lines


@dataclass
class CheckpointResult:
    plan: LoraPlan
    state_dict: dict | None = None
    path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def unmatched(self) -> dict[str, list[str]]:
        """LoRA name -> modules that were not applied (not in the model, or of an unsupported type)."""
        return self.plan.unmatched()

    @property
    def notices(self) -> list[str]:
        return self.plan.notices


def _open_model(value) -> Source:
    if isinstance(value, Source):
        return value
    if isinstance(value, Mapping):
        return DictSource(value, name="model")
    return open_model(value)


def plan_to_checkpoint(checkpoint, specs, *, lora_dirs=None, presets: Mapping[str, str] | None = None,
                       strict: bool = False) -> LoraPlan:
    """Match every LoRA module to a checkpoint key and resolve its ratio, reading headers only."""
    source = _open_model(checkpoint)
    try:
        shapes = {k: v.shape for k, v in source.tensors.items()}
        arch = archmod.detect(source.tensors, shapes, source.name)
        keymap = keymap_from(arch, shapes)
        loras = open_loras(specs, lora_dirs)
    except BaseException:
        source.close()
        raise
    plan = LoraPlan(source, arch, keymap, [], {})
    try:
        for spec, lora in loras:
            applied = AppliedLora(spec, lora, block_ratios(spec, arch, presets))
            plan.loras.append(applied)
            _match(plan, len(plan.loras) - 1, strict)
    except BaseException:
        close_plan(plan)
        for _, f in loras[len(plan.loras):]:
            f.close()
        raise
    return plan


def _match(plan: LoraPlan, index: int, strict: bool) -> None:
    lo = plan.loras[index]
    wrong: list[str] = []
    for module in lo.file.modules.values():
        target = plan.keymap.lookup(module.name)
        if target is None:
            lo.unmatched.append(module.name)
            continue
        if not module.supported:
            lo.unsupported.append((module.name, module.type))
            continue
        shape = module.delta_shape()
        pad = False
        if not fits(shape, target.shape):
            if target.key.endswith("input_blocks.0.0.weight") and pads_channels(shape, target.shape):
                pad = True
            else:
                wrong.append(f"{module.name}: ΔW {list(shape)} vs weight {list(target.shape)}")
                continue
        ratio = lo.ratios.get(target.block, 0.0)
        lo.applied += 1
        plan.by_key.setdefault(target.key, []).append(Contribution(index, module, ratio, target, pad))
    where = f"LoRA {lo.name!r} on model {plan.source.name!r} ({plan.arch.label})"
    if wrong:
        raise LoraMismatchError(
            f"{where}: {len(wrong)} of {len(lo.file.modules)} modules do not fit the model's weights, "
            f"e.g. {wrong[0]}.", "The LoRA was made for another model family (SD1 / SD2 / SDXL); "
            "use it with a model of that family.")
    if lo.applied == 0:
        sample = ", ".join(list(lo.file.modules)[:3])
        raise LoraMismatchError(
            f"{where}: none of its {len(lo.file.modules)} modules matches a module of the model "
            f"(its modules look like {sample}).",
            "It is probably a LoRA for another model family (SDXL, Flux, SD3...) or of an unsupported kind.")
    if lo.unmatched and strict:
        raise LoraMismatchError(f"{where}: {len(lo.unmatched)} modules are not in the model, e.g. "
                                f"{lo.unmatched[0]}.", "Leave out --strict to apply the others.")
    if lo.unmatched or lo.unsupported:
        n = len(lo.unmatched) + len(lo.unsupported)
        plan.notices.append(f"LoRA {lo.name}: {n} of {len(lo.file.modules)} modules not applied "
                            "(listed in the result / printed by the CLI).")


def close_plan(plan: LoraPlan) -> None:
    plan.source.close()
    for lo in plan.loras:
        lo.file.close()


def merge_to_checkpoint(checkpoint, specs, output: str | os.PathLike | None = None, *, overwrite: bool = False,
                        dtype: str = "keep", device: str = "cpu", strict: bool = False, lora_dirs=None,
                        presets: Mapping[str, str] | None = None,
                        progress: Callable[[int, int], None] | None = None) -> CheckpointResult:
    """Merge LoRAs into ``checkpoint`` (a path, a state dict or a Source).

    ``specs``: ``"name:ratio[:blocks],..."``, a list of such items / LoraSpec, or
    ``(file_or_state_dict, ratio[, blocks])`` tuples. Without ``output`` the result's
    ``state_dict`` holds the merged model (untouched tensors are not copied when the checkpoint is
    a state dict); with it, the model is streamed to that .safetensors file. Modules that did not
    land are listed in ``result.unmatched``.
    """
    from ..merge.executor import intra_op_threads

    t0 = time.perf_counter()
    if dtype not in ("keep", *DTYPES):
        raise RecipeError(f"Unknown dtype {dtype!r}: use keep, fp16, bf16 or fp32.")
    out = Path(output) if output is not None else None
    if out is not None:
        if out.suffix.lower() != ".safetensors":
            raise OutputError(f"Output {str(out)!r}: LoRA merges are written as .safetensors.")
        check_output_path(out, overwrite)
    plan = plan_to_checkpoint(checkpoint, specs, lora_dirs=lora_dirs, presets=presets, strict=strict)
    result = CheckpointResult(plan)
    try:
        if out is not None:
            check_not_an_input(out, [("the checkpoint", plan.source.path)]
                               + [(f"LoRA {lo.name!r}", lo.file.path) for lo in plan.loras])
        src = plan.source
        codes = {k: (DTYPES[dtype] if dtype != "keep" and info.is_float else info.dtype)
                 for k, info in src.tensors.items()}
        total = sum(info.nbytes for info in src.tensors.values())
        done = 0

        def tensors():
            nonlocal done
            for key, info in src.tensors.items():
                t = src.tensor(key)
                contribs = [c for c in plan.by_key.get(key, ()) if c.ratio != 0.0]
                if contribs:
                    t = _apply(t, contribs, plan, device)
                if codes[key] != info.dtype:
                    t = t.to(torch_dtype(codes[key]))
                done += info.nbytes
                if progress is not None:
                    progress(done, total)
                yield key, t

        # One intra-op thread, as the merge executor: these are many small adds and products.
        if out is None:
            with intra_op_threads(1):
                result.state_dict = dict(tensors())  # file tensors are private copies; dict ones untouched
        else:
            from ..io.writer import SafetensorsWriter

            meta = _metadata(plan, out)
            entries = [(k, codes[k], tuple(info.shape)) for k, info in src.tensors.items()]
            with SafetensorsWriter(out, entries, meta, overwrite=overwrite) as writer, intra_op_threads(1):
                for _, t in tensors():
                    writer.write(_bytes(t))
            result.path, result.metadata = out, meta
    finally:
        close_plan(plan)
    result.seconds = time.perf_counter() - t0
    return result


def _apply(weight, contribs: list[Contribution], plan: LoraPlan, device: str):
    """``weight`` + Σ ratio·ΔW, computed in float32 and cast back to the weight's dtype."""
    import torch

    w = weight.to(device=device, dtype=torch.float32, copy=True)
    for c in contribs:
        lora = plan.loras[c.lora].file
        delta = lora.delta(c.module, device, scaled=False)
        r = c.ratio * lora.scale(c.module)
        part = w if c.target.rows is None else w[c.target.rows[0]:c.target.rows[1]]
        if c.pad:
            part = part[:, : delta.shape[1]]
            part.add_(delta, alpha=r)
        else:
            part.add_(delta.reshape(part.shape), alpha=r)
    return w.to(device="cpu", dtype=weight.dtype)


def _bytes(t):
    import torch

    t = t.contiguous().reshape(-1)
    return memoryview(t.view(torch.uint8).numpy()) if t.numel() else b""


def _metadata(plan: LoraPlan, out: Path) -> dict[str, str]:
    from ..io.hashing import sha256_file
    from ..merge.metadata import IMPLEMENTATIONS, RESOLUTIONS

    loras = []
    for lo in plan.loras:
        entry = {"name": lo.name, "ratio": lo.spec.ratio, "blocks": lo.spec.blocks,
                 "block_ratios": ratios_text(lo.ratios, plan.arch), "modules": lo.applied}
        if lo.file.path is not None:
            entry["sha256"] = sha256_file(lo.file.path)
        loras.append(entry)
    a = plan.arch
    return {
        "format": "pt",
        "supermerger_lora_merge": json.dumps({"model": plan.source.name, "loras": loras}, ensure_ascii=False),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": a.modelspec_architecture,
        "modelspec.implementation": IMPLEMENTATIONS.get(a.id, ""),
        "modelspec.title": out.stem,
        "modelspec.resolution": RESOLUTIONS.get(a.id, ""),
        "modelspec.date": datetime.date.today().isoformat(),
        "modelspec.merged_from": ", ".join([plan.source.name] + [lo.name for lo in plan.loras]),
        "modelspec.description": "LoRAs merged with SuperMerger: "
                                 + ", ".join(lo.spec.text().replace(lo.spec.name, lo.name, 1) for lo in plan.loras),
    }
