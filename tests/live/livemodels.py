"""Random-weight checkpoints for the live hosts.

- A1111 builds a model from ``<stem>.yaml`` beside a checkpoint: tiny SD1 checkpoints (every real key,
  small widths) with a yaml derived from the host's own ``configs/v1-inference.yaml`` and a tiny CLIP
  text config folder (tokenizer from open-clip-torch's vocabulary, as make_offline_clip.py builds it).
- Forge builds every model from its shipped full-size configs: full-size SD1.5 layouts (2.1 GB fp16),
  made once and kept in the live cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from supermerger.testing.synthetic import TINY, write_checkpoint

from hostenv import cache_root


def full_sd1(name: str, seed: int) -> Path:
    """A full-size SD1.5-layout checkpoint in the live cache (made once; 2.1 GB)."""
    folder = cache_root() / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"full-sd1-{seed}.safetensors"
    if not path.exists():
        write_checkpoint(path, "sd1", seed=seed, scale="full")
    return path


def link_into(folder: Path, source: Path, name: str) -> Path:
    """``folder/name`` as a hard link to ``source`` (a copy where links are impossible)."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / name
    if dest.exists():
        dest.unlink()
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)
    return dest


def tiny_clip_folder(root: Path, hf_home: Path) -> Path:
    """A transformers CLIP text-model folder at the tiny SD1 width, with the real tokenizer files."""
    w = TINY["sd1"]
    folder = root / "tiny-clip"
    if (folder / "config.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    snap = next((hf_home / "hub" / "models--openai--clip-vit-large-patch14" / "snapshots").iterdir())
    for f in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy2(snap / f, folder / f)
    text = {"hidden_size": w.clip_l, "intermediate_size": w.clip_l_mlp, "num_attention_heads": 2,
            "num_hidden_layers": 12, "max_position_embeddings": w.ctx, "vocab_size": 49408,
            "hidden_act": "quick_gelu", "projection_dim": w.clip_l, "layer_norm_eps": 1e-5,
            "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "model_type": "clip_text_model",
            "architectures": ["CLIPTextModel"], "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(text))
    return folder


def tiny_sd1_yaml(tree: Path, clip_folder: Path) -> str:
    """The host's v1-inference.yaml at the tiny widths of ``synthetic.TINY['sd1']``."""
    w = TINY["sd1"]
    text = (tree / "configs" / "v1-inference.yaml").read_text()
    subs = [(r"model_channels: 320", f"model_channels: {w.unet}"), (r"context_dim: 768", f"context_dim: {w.clip_l}"),
            (r"num_heads: 8", "num_heads: 2"), (r"\bch: 128", f"ch: {w.vae}")]
    for pattern, value in subs:
        text, n = re.subn(pattern, value, text)
        assert n == 1, f"{pattern!r} not found once in the host's v1-inference.yaml"
    text = text.rstrip() + f"\n      params:\n        version: {clip_folder}\n"
    return text


def tiny_sd1(folder: Path, name: str, seed: int, yaml_text: str) -> Path:
    """A tiny SD1 checkpoint (vocabulary of the real tokenizer) with its yaml config beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = write_checkpoint(folder / f"{name}.safetensors", "sd1", seed=seed, vocab=49408)
    (folder / f"{name}.yaml").write_text(yaml_text)
    return path
