"""sd-mecha's merge of the benchmark's files, as its documentation shows it (run by bench/peers.py in
sd-mecha's own venv): ``peer_mecha.py MODE OUT A B [C]``, MODE weight_sum (α 0.5) or add_difference (α 1)."""

import sys

import sd_mecha
import torch

mode, out, *inputs = sys.argv[1:]
models = [sd_mecha.model(p) for p in inputs]
if mode == "weight_sum":
    recipe = sd_mecha.weighted_sum(models[0], models[1], alpha=0.5)
elif mode == "add_difference":
    recipe = sd_mecha.add_difference(models[0], models[1], models[2], alpha=1.0)
else:
    sys.exit(f"unknown mode {mode!r}")
sd_mecha.merge(recipe, output=out, output_dtype=torch.float16)
