"""Metadata written into merged safetensors files.

- ``sd_merge_recipe`` / ``sd_merge_models``: the WebUI's keys (JSON strings), in SuperMerger's
  layout, so the WebUI's metadata viewer and other tools recognise the merge.
- ``modelspec.*``: the SAI model spec keys (architecture, title, date, merged_from, ...).
- ``supermerger_recipe``: our complete recipe as JSON, from which the merge replays exactly.
"""

from __future__ import annotations

import datetime as _dt
import json

from .plan import MergePlan
from .recipe import Recipe
from .weights import format_weights

RECIPE_KEY = "supermerger_recipe"
IMPLEMENTATIONS = {
    "sd1": "https://github.com/CompVis/stable-diffusion",
    "sd2": "https://github.com/Stability-AI/stablediffusion",
    "sdxl": "https://github.com/Stability-AI/generative-models",
}
RESOLUTIONS = {"sd1": "512x512", "sd2": "512x512", "sdxl": "1024x1024"}


def build_metadata(plan: MergePlan, recipe: Recipe, hashes: dict[str, str], legacy: dict[str, str],
                   date: str | None = None) -> dict[str, str]:
    r = recipe
    inputs = plan.inputs()
    sha = {k: hashes.get(k, "") for k in inputs}
    include_mode = "Include" if r.include else "Exclude" if r.exclude else "Off"
    sm_recipe = {
        "type": "sd-webui-supermerger",
        "weights_alpha": list(plan.block_alpha[1:]) if plan.block_alpha is not None else None,
        "weights_beta": list(plan.block_beta[1:]) if plan.block_beta is not None else None,
        "weights_alpha_orig": format_weights(plan.block_alpha) if plan.block_alpha is not None else None,
        "weights_beta_orig": format_weights(plan.block_beta) if plan.block_beta is not None else None,
        "model_a": sha.get("A", ""),
        "model_b": sha.get("B", ""),
        "model_c": sha.get("C", ""),  # no C in the merge (a weight sum): no hash, not A's
        "base_alpha": plan.block_alpha[0] if plan.block_alpha is not None else r.alpha,
        "base_beta": plan.block_beta[0] if plan.block_beta is not None else r.beta,
        "mode": plan.mode.label,
        "mbw": plan.block_alpha is not None,
        "elemental_merge": [e.text for e in plan.elemental] if plan.elemental else "",
        "calcmode": plan.calcmode.id,
        include_mode: (r.include or r.exclude or ""),
    }
    models = {}
    for k in inputs:
        if sha.get(k):
            models[sha[k]] = {"name": plan.sources[k].name, "legacy_hash": legacy.get(k, "")}
    meta = {
        "format": "pt",
        "sd_merge_recipe": json.dumps(sm_recipe, ensure_ascii=False),
        "sd_merge_models": json.dumps(models, ensure_ascii=False),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": plan.arch.modelspec_architecture,
        "modelspec.implementation": IMPLEMENTATIONS.get(plan.arch.id, ""),
        "modelspec.title": plan.name,
        "modelspec.resolution": RESOLUTIONS.get(plan.arch.id, ""),
        "modelspec.date": date or _dt.date.today().isoformat(),
        "modelspec.merged_from": ", ".join(plan.sources[k].name for k in inputs),
        "modelspec.description": f"Merged with SuperMerger: {plan.mode.label}, calcmode {plan.calcmode.id}",
        RECIPE_KEY: r.replace(hashes={k: v for k, v in sha.items() if v}).to_json(indent=None),
    }
    return meta
