"""sd-meh's merge of the benchmark's files through its library API, as the `meh` CLI calls it (run by
bench/peers.py in sd-meh's own venv): ``peer_meh.py MODE OUT A B [C]``, MODE weight_sum (α 0.5) or
add_difference (α 1). sd-meh appends ".safetensors" to the output name itself."""

import sys

from sd_meh.merge import merge_models, save_model

mode, out, *inputs = sys.argv[1:]
models = {f"model_{k}": p for k, p in zip("abc", inputs)}
merge_mode = {"weight_sum": "weighted_sum", "add_difference": "add_difference"}[mode]
alpha = 0.5 if mode == "weight_sum" else 1.0
# the same ratio for every U-Net block (sd-meh reads one per block: 12 in, 1 middle, 12 out) and the rest
merged = merge_models(models, weights={"alpha": [alpha] * 25}, bases={"alpha": alpha}, merge_mode=merge_mode,
                      precision=16)
save_model(merged, out.removesuffix(".safetensors"), "safetensors")
