"""LoRA tools: merge LoRAs into a checkpoint, merge LoRAs together, make a LoRA from two
checkpoints, extract from two LoRAs, and list LoRA dimensions (spec §10).

    from supermerger import lora
    sd = lora.merge_to_checkpoint("model.safetensors", "style.safetensors:0.8:OUTD").state_dict
    lora.merge_to_checkpoint("model.safetensors", "a.safetensors:0.7,b.safetensors:-0.3", output="out.safetensors")
    lora.merge_loras("a.safetensors:1,b.safetensors:0.5", "ab.safetensors", same_to_strength=True)
    lora.make_lora("tuned.safetensors", "base.safetensors", "diff.safetensors", dim=64)

Formats: kohya LoRA / LoCon, LyCORIS LoHa / LoKr (and full), diffusers / PEFT names; SD1, SD2, SDXL.
"""

from .blocks import LoraSpec, block_ratios, load_lbw_presets, parse_specs
from .dims import LoraInfo, inspect_lora, lora_dims
from .formats import LoraFile, LoraFileError, LoraMismatchError, load_lora
from .keymap import KeyMap, detect_lora_arch, keymap_for
from .make import make_lora
from .merge_loras import LoraResult, extract_loras, merge_loras
from .to_checkpoint import CheckpointResult, merge_to_checkpoint, plan_to_checkpoint

__all__ = [
    "merge_to_checkpoint", "plan_to_checkpoint", "merge_loras", "extract_loras", "make_lora", "lora_dims",
    "inspect_lora", "load_lora", "parse_specs", "block_ratios", "load_lbw_presets", "detect_lora_arch", "keymap_for",
    "LoraSpec", "LoraFile", "LoraInfo", "KeyMap", "LoraResult", "CheckpointResult", "LoraFileError",
    "LoraMismatchError",
]
