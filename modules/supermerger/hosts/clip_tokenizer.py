"""The CLIP tokenizer files, made locally from the BPE vocabulary that ships in open-clip-torch.

Stable Diffusion's text encoders all use OpenAI's CLIP byte-level BPE (49,408 ids). The Hugging Face
tokenizer files (``vocab.json``, ``merges.txt``) follow from open_clip's ``bpe_simple_vocab_16e6.txt.gz``
(see spec/hosts.md §2.2), so nothing is downloaded. open-clip-torch is installed with ``--no-deps``
only for this data file; it is found without importing the package (whose import needs torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from pathlib import Path

from ..errors import SuperMergerError

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # the vocabulary is 49,408 = 2 * 256 byte symbols + merges + 2 specials
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
VOCAB_SIZE = 49408


def _byte_symbols() -> list[str]:
    """The printable stand-in for each byte value 0..255 (the GPT-2 byte-level table), in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)  # unprintable bytes are moved past the Latin-1 range, in order
            extra += 1
    # The vocabulary lists the printable bytes first, then the moved ones (OpenAI's order).
    return [table[b] for b in printable] + [table[b] for b in range(256) if b not in printable]


def find_bpe_file() -> Path:
    for module in ("open_clip", "clip"):  # open-clip-torch, or clip-anytorch
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            path = Path(spec.origin).parent / BPE_FILE
            if path.is_file():
                return path
    raise SuperMergerError(
        f"The CLIP vocabulary ({BPE_FILE}) was not found: it ships in the open-clip-torch package.",
        "Install it without its dependencies: pip install --no-deps open-clip-torch")


def write_tokenizer_files(folder: str | os.PathLike, pad_token: str = EOS, bpe_file: str | os.PathLike | None = None) -> Path:
    """Write vocab.json, merges.txt and the configs of a CLIP tokenizer into ``folder`` (kept if present)."""
    folder = Path(folder)
    done = folder / "tokenizer_config.json"
    if done.is_file() and json.loads(done.read_text(encoding="utf-8")).get("pad_token") == pad_token:
        return folder
    with gzip.open(bpe_file or find_bpe_file(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:1 + N_MERGES]]
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".partial"
    tmp.mkdir(exist_ok=True)
    (tmp / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                    encoding="utf-8")
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                    encoding="utf-8")
    (tmp / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
              "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token,
              "clean_up_tokenization_spaces": True}
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        os.replace(tmp / name, folder / name)
    (tmp / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    os.replace(tmp / "tokenizer_config.json", done)  # last: marks the folder complete
    tmp.rmdir()
    return folder


def load_tokenizer(folder: str | os.PathLike, pad_token: str = EOS):
    """A transformers CLIPTokenizer from locally written files (written first if missing)."""
    from transformers import CLIPTokenizer

    write_tokenizer_files(folder, pad_token)
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
