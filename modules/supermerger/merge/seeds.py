"""Seeds: one number per merge, from which every random draw of that merge follows.

A merge that uses randomness (dice-roll ratios, ``plus random``, ``dare``) records its seed in
the recipe. Draws that belong to one key (a drop mask, a noise tensor, an elemental ratio) come
from a generator derived from ``(seed, key, purpose)``, never from a shared stream, so the result
does not depend on the order in which keys are processed, on chunking, or on the device.
"""

from __future__ import annotations

import hashlib
import secrets

SEED_LIMIT = 4294967295  # the original's seed field accepts 0..2**32-1; -1 means "draw one"


def draw_seed() -> int:
    """A fresh seed in [0, 4294967294), the range the original draws from."""
    return secrets.randbelow(SEED_LIMIT - 1)


def key_seed(seed: int, key: str, purpose: str) -> int:
    """A 63-bit seed for one (key, purpose), stable across runs, platforms and Python versions."""
    digest = hashlib.blake2b(f"{seed}\x00{purpose}\x00{key}".encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def key_generator(seed: int | None, key: str, purpose: str):
    """A CPU ``torch.Generator`` for one (key, purpose); draw on the CPU and move the result."""
    import torch

    if seed is None:
        raise ValueError("a seeded calcmode was called without a seed; the plan draws one when none is given")
    return torch.Generator(device="cpu").manual_seed(key_seed(seed, key, purpose))


def key_uniform(seed: int, key: str, purpose: str) -> float:
    """One uniform number in [0, 1) for one (key, purpose), with 53 random bits."""
    return (key_seed(seed, key, purpose) >> 10) / float(1 << 53)
