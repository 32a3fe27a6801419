"""The library entry points: plan a merge, run it, get a state dict or a file.

    import supermerger
    recipe = supermerger.Recipe(model_a="A.safetensors", model_b="B.safetensors", alpha=0.3)
    state_dict = supermerger.merge(recipe).state_dict           # in memory
    supermerger.merge(recipe, output="out.safetensors")        # streamed to a file
"""

from __future__ import annotations

import datetime
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import ModelFileError, OutputError, RecipeError
from .io.atomic import check_not_an_input, check_output_path
from .io.hashing import BackgroundHash, legacy_hash
from .io.safetensors_format import read_header
from .io.sources import DictSource, Source, open_model
from .merge.plan import MergePlan, build_plan
from .merge.recipe import Recipe

OUTPUT_EXTS = (".safetensors", ".ckpt", ".pt")


@dataclass
class MergeResult:
    plan: MergePlan
    name: str
    state_dict: dict | None = None
    path: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    notices: list[str] = field(default_factory=list)
    history_id: int | None = None  # the merge's ID in the merge history (None when not recorded)
    pending_history: Any = None  # merge(history="deferred"): recorded by record_history(), or never

    def record_history(self) -> int | None:
        """Record a merge made with ``history="deferred"`` (once it did what it was for: a host records a
        merge only after the merge is its live model). Returns the history ID; a second call records nothing."""
        pending, self.pending_history = self.pending_history, None
        if pending is not None:
            from . import history as history_mod

            history_mod.finish(pending, self)
        return self.history_id


ModelLike = Any  # a path, a state dict, or a Source


def _open(value: ModelLike, label: str) -> Source:
    if isinstance(value, Source):
        return value
    if isinstance(value, Mapping):
        return DictSource(value, name=f"model_{label}")
    if isinstance(value, (str, os.PathLike)):
        return open_model(value)
    raise RecipeError(f"Model {label}: expected a file path or a state dict, got {type(value).__name__}.")


def open_sources(recipe: Recipe, models: Mapping[str, ModelLike] | None = None) -> dict[str, Source]:
    """Open every model the recipe names (headers only for safetensors). ``models`` overrides by label."""
    models = dict(models or {})
    wanted = {"A": recipe.model_a, "B": recipe.model_b, "C": recipe.model_c, "VAE": recipe.bake_vae}
    sources: dict[str, Source] = {}
    try:
        for label, value in wanted.items():
            value = models.get(label, value)
            if value is None or value == "":
                continue
            sources[label] = _open(value, label)
    except BaseException:
        for s in sources.values():
            s.close()
        raise
    if "A" not in sources or "B" not in sources:
        missing = "A" if "A" not in sources else "B"
        raise RecipeError(f"Model {missing} is not set.", "Give --model-a and --model-b (model_a / model_b).")
    return sources


def plan_merge(recipe: Recipe, models: Mapping[str, ModelLike] | None = None,
               presets: Mapping[str, str] | None = None) -> MergePlan:
    """Validate and plan without reading any tensor (what ``--dry-run`` prints)."""
    recipe.check_types()
    sources = open_sources(recipe, models)
    return build_plan(recipe, sources, presets)


def merge(recipe: Recipe, *, models: Mapping[str, ModelLike] | None = None, output: str | os.PathLike | None = None,
          overwrite: bool | None = None, device: str | None = None,
          progress: Callable[[int, int], None] | None = None, stop: threading.Event | None = None,
          presets: Mapping[str, str] | None = None, into: Mapping | None = None,
          history: bool | str = True) -> MergeResult:
    """Merge per ``recipe``. With an output path (argument or ``recipe.output``) the result is streamed
    to that file; without one the merged state dict is returned in memory.

    ``into``: an existing state dict (a live model's parameters, for instance) whose tensors are
    overwritten in place with the result — no second copy of the model is made. It must hold
    every output key with the same shape (any dtype and device); ``result.state_dict`` is it.

    ``history``: record the merge in the merge history (``result.history_id``); a history that
    cannot be written adds a notice and never fails the merge. ``"deferred"``: prepare the record but
    write it only when ``result.record_history()`` is called (a merge that never becomes the live
    model is never recorded)."""
    from .merge.executor import execute
    from .merge.metadata import build_metadata

    t0 = time.perf_counter()
    recipe.check_types()
    out = output if output is not None else recipe.output
    overwrite = recipe.overwrite if overwrite is None else overwrite
    device = device or recipe.device or "cpu"
    if into is not None and output is not None:
        raise RecipeError("Give either an output file or a state dict to merge into, not both.")
    if into is not None:
        out = None
    if out is not None:
        out = Path(out)
        if out.suffix.lower() not in OUTPUT_EXTS:
            raise OutputError(f"Output {str(out)!r}: unknown file type {out.suffix or '(none)'!r}.",
                              "Use .safetensors (recommended) or .ckpt.")
        check_output_path(out, overwrite)
    _check_device(device)
    plan = plan_merge(recipe, models, presets)
    if out is not None:
        try:
            check_not_an_input(out, [(f"model {k}" if k != "VAE" else "the VAE", s.path)
                                     for k, s in plan.sources.items()])
        except BaseException:
            for s in plan.sources.values():
                s.close()
            raise
    if history:
        from . import history as history_mod

        pending = history_mod.start(plan, saving=out is not None)  # hashes in-memory merges' inputs meanwhile
    try:
        result = MergeResult(plan, plan.name, notices=list(plan.notices))
        if into is not None:
            result.state_dict = execute(plan, "into", target=into, device=device, progress=progress, stop=stop)
        elif out is None:
            result.state_dict = execute(plan, "memory", device=device, progress=progress, stop=stop)
        else:
            hashers = {k: BackgroundHash(s.path) for k, s in plan.sources.items()
                       if s.path is not None and k in plan.inputs()}
            legacy = {k: legacy_hash(s.path) for k, s in plan.sources.items()
                      if s.path is not None and s.path.stat().st_size > 0x110000}
            # plan.recipe: the recipe as merged, with the seed actually drawn for random ratios
            rec = plan.recipe.replace(output=str(out))
            date = datetime.date.today().isoformat()
            # The header is written before the data; input hashes (computed meanwhile on another
            # thread) replace same-length placeholders once known.
            placeholders = {k: _placeholder(plan, k) for k in hashers}

            def metadata(hashes: dict[str, str]) -> dict[str, str]:
                return build_metadata(plan, rec, hashes, legacy, date) if rec.metadata else {"format": "pt"}

            meta = metadata(placeholders)
            if out.suffix.lower() == ".safetensors":
                from .io.writer import SafetensorsWriter

                entries = [(t.key, t.dtype, t.shape) for t in plan.tasks]
                with SafetensorsWriter(out, entries, meta, overwrite=overwrite) as writer:
                    execute(plan, "file", writer=writer, device=device, progress=progress, stop=stop)
                    hashes = {k: h.get() for k, h in hashers.items()}
                    if rec.metadata:
                        meta = metadata(hashes)
                        writer.rewrite_metadata(meta)
            else:
                from .io.writer import save_torch

                sd = execute(plan, "memory", device=device, progress=progress, stop=stop)
                hashes = {k: h.get() for k, h in hashers.items()}
                meta = metadata(hashes)
                save_torch(out, sd, overwrite=overwrite)
            result.metadata = meta
            for k, h in hashes.items():
                recorded = recipe.hashes.get(k)
                if recorded and recorded != h:
                    result.notices.append(f"model {k} ({plan.sources[k].name}) differs from the one recorded in the "
                                          f"recipe (sha256 {h[:10]} vs {recorded[:10]}).")
            result.path = out
    finally:
        for s in plan.sources.values():
            s.close()
    result.seconds = time.perf_counter() - t0
    if history == "deferred":
        result.pending_history = pending
    elif history:
        history_mod.finish(pending, result)
    return result


def _placeholder(plan: MergePlan, label: str) -> str:
    """A 64-character stand-in for a sha256, the same for every label that names the same file."""
    path = plan.sources[label].path
    same = [k for k in ("A", "B", "C") if k in plan.sources and plan.sources[k].path == path]
    return (same[0] if same else label) * 64


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError(f"Device {device!r} was asked for, but no CUDA GPU is available to PyTorch.",
                          "Use --device cpu, or install a CUDA build of PyTorch.")


def recipe_from_file(path: str | os.PathLike) -> Recipe:
    """The recipe stored in a merged .safetensors file (or a recipe .json file)."""
    from .merge.metadata import RECIPE_KEY

    path = Path(path)
    if path.suffix.lower() == ".json":
        return Recipe.load(path)
    meta = read_header(path).metadata
    text = meta.get(RECIPE_KEY)
    if not text:
        raise ModelFileError(f"{str(path)!r} carries no SuperMerger recipe in its metadata.",
                             "Only files merged by this SuperMerger can be replayed with --recipe-from.")
    recipe = Recipe.from_json(text, f"recipe in {path.name}")
    return recipe.replace(output=None)
