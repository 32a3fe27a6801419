"""The embedded default: tiny demo checkpoints, made on first use, so a fresh machine can merge and
generate without any model.

Two SD1-layout models (``demoA``, ``demoB``) and two SDXL-layout ones (``demoXL_A``, ``demoXL_B``) in
``<data folder>/demo/``: every key and layer of the real architectures, tiny widths, random weights,
and the full 49,408-token CLIP vocabulary so the standalone host runs them. Their images are noise.
"""

from __future__ import annotations

from pathlib import Path

from .paths import data_dir

VOCAB = 49408
NAMES = {"sd1": ("demoA", "demoB"), "sdxl": ("demoXL_A", "demoXL_B")}


def demo_dir() -> Path:
    folder = data_dir() / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _current(path: Path) -> bool:
    """A demo file of this version: its token embeddings have the full vocabulary."""
    from .io.safetensors_format import read_header

    try:
        tensors = read_header(path).tensors
    except Exception:  # noqa: BLE001 - unreadable: written again
        return False
    rows = [info.shape[0] for key, info in tensors.items() if key.endswith("token_embedding.weight")]
    return bool(rows) and all(r == VOCAB for r in rows)


def demo_models(arch: str = "sd1") -> tuple[str, str]:
    """Paths of the two demo models of ``arch`` ('sd1' or 'sdxl'), written if missing or outdated."""
    from .testing.synthetic import write_checkpoint

    folder = demo_dir()
    out = []
    for seed, name in enumerate(NAMES[arch], start=1):
        path = folder / f"{name}.safetensors"
        if not path.exists() or not _current(path):
            write_checkpoint(path, arch, seed=seed, vocab=VOCAB)
        out.append(str(path))
    return out[0], out[1]
