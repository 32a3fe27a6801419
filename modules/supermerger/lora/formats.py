"""LoRA files: which modules they hold, of which type, and each module's weight change ΔW.

Types (a module's type follows from its tensor names, whatever the naming of the module itself):

* LoRA / LoCon (kohya ``lora_up`` / ``lora_down`` / ``alpha``, PEFT ``lora_B`` / ``lora_A``, old
  diffusers ``.lora.up`` / ``.lora.down``): ΔW = up @ down · alpha/rank; for a 3×3 conv, up is
  (out, rank, 1, 1) and down (rank, in, 3, 3); LyCORIS' Tucker form adds ``lora_mid``.
* LoHa (LyCORIS ``hada_w1_a`` ... ``hada_w2_b``, optional ``hada_t1`` / ``hada_t2``):
  ΔW = (w1a @ w1b) ⊙ (w2a @ w2b) · alpha/rank.
* LoKr (``lokr_w1`` or ``lokr_w1_a`` @ ``lokr_w1_b``; ``lokr_w2`` likewise, optional ``lokr_t2``):
  ΔW = kron(w1, w2) · alpha/rank (scale 1 when neither side is factored).
* full (LyCORIS ``diff``): ΔW = diff.

Everything up to :meth:`LoraFile.delta` reads the safetensors header only.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import ArchitectureError, ModelFileError
from ..io.sources import DictSource, Source, model_name, open_model

Shape = tuple[int, ...]


class LoraFileError(ModelFileError):
    """A LoRA file is unreadable, not a LoRA, or has a broken module."""


class NotALoraError(LoraFileError):
    """A file without a single LoRA tensor (a checkpoint, an embedding...)."""


class LoraMismatchError(ArchitectureError):
    """A LoRA does not fit the model it is applied to (another family, other shapes)."""


# Tensor-name suffix -> part name. kohya / LyCORIS first, then PEFT, then old diffusers.
_PARTS = {
    "lora_up.weight": "up", "lora_down.weight": "down", "lora_mid.weight": "mid",
    "lora_B.weight": "up", "lora_A.weight": "down",
    "alpha": "alpha", "scale": "scale",
    "hada_w1_a": "w1a", "hada_w1_b": "w1b", "hada_w2_a": "w2a", "hada_w2_b": "w2b",
    "hada_t1": "t1", "hada_t2": "t2",
    "lokr_w1": "k1", "lokr_w1_a": "k1a", "lokr_w1_b": "k1b",
    "lokr_w2": "k2", "lokr_w2_a": "k2a", "lokr_w2_b": "k2b", "lokr_t2": "kt2",
    "diff": "diff",
    # recognised, not supported: reported with the module
    "diff_b": "diff_b", "dora_scale": "dora", "lora_magnitude_vector": "dora",
    "w_norm": "w_norm", "b_norm": "b_norm", "oft_blocks": "oft", "oft_diag": "oft", "on_input": "ia3",
    "a1.weight": "glora", "a2.weight": "glora", "b1.weight": "glora", "b2.weight": "glora",
}
_PART_RE = re.compile(r"^(?P<module>.+?)\.(?P<part>" + "|".join(re.escape(p) for p in
                                                                  sorted(_PARTS, key=len, reverse=True)) + r")$")
# Old diffusers: ``...to_q.lora.up.weight``, ``...processor.to_q_lora.up.weight``, ``...lora_linear_layer.up.weight``.
_DIFFUSERS_RE = re.compile(r"^(?P<module>.+(?:\.lora|_lora|\.lora_linear_layer))\.(?P<part>up|down)\.weight$")

UNSUPPORTED = {"dora": "DoRA (weight decomposition)", "w_norm": "norm", "b_norm": "norm", "oft": "OFT",
               "ia3": "IA3", "glora": "GLoRA", "diff_b": "full bias"}


def split_key(key: str) -> tuple[str, str] | None:
    """``lora_unet_x.lora_up.weight`` -> (``lora_unet_x``, ``up``); None for a tensor of no known part."""
    m = _PART_RE.match(key)
    if m:
        return m["module"], _PARTS[m["part"]]
    m = _DIFFUSERS_RE.match(key)
    if m:
        return m["module"], m["part"]
    return None


@dataclass
class LoraModule:
    name: str  # module name as in the file
    parts: dict[str, str] = field(default_factory=dict)  # part -> tensor key
    shapes: dict[str, Shape] = field(default_factory=dict)  # part -> shape

    @property
    def type(self) -> str:
        """'lora', 'loha', 'lokr', 'full', or the name of an unsupported type."""
        p = self.parts
        for part, label in UNSUPPORTED.items():
            if part in p:
                return label
        if "up" in p or "down" in p:
            return "lora"
        if any(k.startswith(("w1", "w2", "t1", "t2")) for k in p):
            return "loha"
        if any(k.startswith(("k1", "k2", "kt")) for k in p):
            return "lokr"
        if "diff" in p:
            return "full"
        return "empty"

    @property
    def supported(self) -> bool:
        return self.type in ("lora", "loha", "lokr", "full")

    def missing(self) -> list[str]:
        """Tensors this module needs but lacks (a broken file)."""
        p, t = self.parts, self.type
        if t == "lora":
            return [n for n in ("up", "down") if n not in p]
        if t == "loha":
            return [n for n in ("w1a", "w1b", "w2a", "w2b") if n not in p]
        if t == "lokr":
            miss = [] if "k1" in p or ("k1a" in p and "k1b" in p) else ["lokr_w1 (or lokr_w1_a and lokr_w1_b)"]
            if not ("k2" in p or ("k2a" in p and "k2b" in p)):
                miss.append("lokr_w2 (or lokr_w2_a and lokr_w2_b)")
            return miss
        if t == "empty":
            return ["any weight (only alpha/scale found)"]
        return []

    @property
    def rank(self) -> int | None:
        s = self.shapes
        t = self.type
        if t == "lora":
            return s["down"][0]
        if t == "loha":
            return s["w1b"][0]
        if t == "lokr":
            if "k2b" in s:
                return s["k2b"][0]
            if "k1b" in s:
                return s["k1b"][0]
        return None

    @property
    def is_conv(self) -> bool:
        """A LoCon-style module (a convolution with a kernel larger than 1×1)."""
        shape = self.delta_shape()
        return len(shape) == 4 and shape[2:] != (1, 1)

    def delta_shape(self) -> Shape:
        """The shape of ΔW as the module builds it, from the tensor shapes alone."""
        s = self.shapes
        t = self.type
        if t == "lora":
            up, down = s["up"], s["down"]
            if "mid" in s:
                return (up[0], down[1]) + tuple(s["mid"][2:])
            return (up[0],) + tuple(down[1:])
        if t == "loha":
            if "t1" in s:
                return (s["w1a"][1], s["w1b"][1]) + tuple(s["t1"][2:])
            return (s["w1a"][0],) + tuple(s["w1b"][1:])
        if t == "lokr":
            w1 = s["k1"] if "k1" in s else (s["k1a"][0], s["k1b"][1])
            if "k2" in s:
                w2 = s["k2"]
            elif "kt2" in s:
                w2 = (s["k2a"][1], s["k2b"][1]) + tuple(s["kt2"][2:])
            else:
                w2 = (s["k2a"][0], s["k2b"][1])
            return (w1[0] * w2[0], w1[1] * w2[1]) + tuple(w2[2:])
        if t == "full":
            return tuple(s["diff"])
        return ()

    @property
    def numel(self) -> int:
        return math.prod(self.delta_shape())


def fits(delta_shape: Shape, target_shape: Shape) -> bool:
    """ΔW can be added to a weight of ``target_shape`` (same size and rows; a linear LoRA may
    target a 1×1 conv and back)."""
    return (delta_shape[:1] == target_shape[:1] and math.prod(delta_shape) == math.prod(target_shape))


def pads_channels(delta_shape: Shape, target_shape: Shape) -> bool:
    """ΔW for 4 input channels on an inpainting (9) / instruct-pix2pix (8) input convolution."""
    return (len(delta_shape) == 4 and len(target_shape) == 4 and delta_shape[0] == target_shape[0]
            and delta_shape[2:] == target_shape[2:] and delta_shape[1] < target_shape[1])


class LoraFile:
    """A LoRA / LyCORIS file (or state dict): metadata and modules from the header; tensors on demand."""

    def __init__(self, source: Source, name: str | None = None):
        self.source = source
        self.name = name or source.name
        self.path: Path | None = source.path
        self.metadata: dict[str, str] = dict(source.metadata)
        self.modules: dict[str, LoraModule] = {}
        self.unknown_keys: list[str] = []
        for key, info in source.tensors.items():
            split = split_key(key)
            if split is None:
                self.unknown_keys.append(key)
                continue
            module, part = split
            m = self.modules.setdefault(module, LoraModule(module))
            m.parts[part] = key
            m.shapes[part] = tuple(info.shape)
        where = f"LoRA {self.name!r}" + (f" ({self.path})" if self.path else "")
        if not self.modules:
            sample = ", ".join(self.unknown_keys[:3]) or "no tensors"
            raise NotALoraError(
                f"{where} holds no LoRA modules (first tensors: {sample}).",
                "Expected kohya (lora_up/lora_down), LyCORIS (hada_*/lokr_*) or diffusers/PEFT (lora_A/lora_B) "
                "tensors; a checkpoint given as a LoRA looks like this.")
        for m in self.modules.values():
            missing = m.missing()
            if missing:
                raise LoraFileError(f"{where} is malformed: module {m.name!r} has {', '.join(sorted(m.parts))} "
                                    f"but no {', '.join(missing)}.", "The file is damaged or was cut short; "
                                    "download or export it again.")
            if m.supported:
                self._check_shapes(m, where)
        self._alphas: dict[str, float | None] = {}

    def _check_shapes(self, m: LoraModule, where: str) -> None:
        s = m.shapes
        ok = True
        if m.type == "lora":
            ok = s["up"][1] == s["down"][0] and len(s["up"]) in (2, 4) and len(s["down"]) in (2, 4)
            if "mid" in s:
                ok = ok and len(s["mid"]) == 4 and s["mid"][0] == s["up"][1] and s["mid"][1] == s["down"][0]
        elif m.type == "loha" and "t1" not in s:
            ok = s["w1a"][1] == s["w1b"][0] and s["w2a"][1] == s["w2b"][0]
        if ok and m.type in ("loha", "lokr"):
            ok = all(n > 0 for n in m.delta_shape())
        if not ok:
            shapes = ", ".join(f"{p} {list(v)}" for p, v in s.items())
            raise LoraFileError(f"{where} is malformed: the tensors of module {m.name!r} do not fit together "
                                f"({shapes}).", "The file is damaged; download or export it again.")

    # -- values ----------------------------------------------------------------------------------
    def read(self, key: str, device: str = "cpu"):
        """A float32 copy (never the caller's own tensor, which merges may change in place)."""
        return self.source.tensor(key).to(device=device, dtype=_f32(), copy=True)

    def alpha(self, module: LoraModule) -> float | None:
        if module.name not in self._alphas:
            key = module.parts.get("alpha")
            self._alphas[module.name] = float(self.source.tensor(key).float().reshape(-1)[0]) if key else None
        return self._alphas[module.name]

    def scale(self, module: LoraModule) -> float:
        """The alpha/rank factor of a module (the ``scale`` tensor, if the file has one, wins)."""
        if "scale" in module.parts:
            return float(self.source.tensor(module.parts["scale"]).float().reshape(-1)[0])
        alpha = self.alpha(module)
        rank = module.rank
        if module.type == "full" or alpha is None or not rank:
            return 1.0
        return alpha / rank

    def factors(self, module: LoraModule, device: str = "cpu") -> dict:
        return {part: self.read(key, device) for part, key in module.parts.items() if part not in ("alpha", "scale")}

    def delta(self, module: LoraModule, device: str = "cpu", scaled: bool = True):
        """ΔW of ``module`` in float32, in the shape :meth:`LoraModule.delta_shape` gives; with the
        alpha/rank scale unless ``scaled`` is False (then multiply by :meth:`scale` yourself)."""
        delta = module_delta(module.type, self.factors(module, device))
        return delta.mul_(self.scale(module)) if scaled else delta

    def close(self) -> None:
        self.source.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _f32():
    import torch

    return torch.float32


# -- the maths (pure functions of tensors) -------------------------------------------------------

def lora_delta(up, down, mid=None):
    """up @ down; 3×3 convs: (out, r, 1, 1) and (r, in, kh, kw) -> (out, in, kh, kw); Tucker with mid."""
    import torch

    if mid is not None:  # x -> down (1×1, in->r) -> mid (k×k, r->r) -> up (1×1, r->out)
        return torch.einsum("oa,abkl,bi->oikl", up.flatten(1), mid, down.flatten(1))
    if down.ndim == 4:
        return torch.einsum("or,rikl->oikl", up.flatten(1), down)
    return up.flatten(1) @ down


def tucker(t, wa, wb):
    """LyCORIS' Tucker rebuild: core t (r, r, kh, kw), wa (r, out), wb (r, in) -> (out, in, kh, kw)."""
    import torch

    return torch.einsum("ijkl,jr,ip->prkl", t, wb, wa)


def loha_delta(w1a, w1b, w2a, w2b, t1=None, t2=None):
    w1 = tucker(t1, w1a, w1b) if t1 is not None else _matmul(w1a, w1b)
    w2 = tucker(t2, w2a, w2b) if t2 is not None else _matmul(w2a, w2b)
    return w1 * w2.reshape(w1.shape)


def _matmul(a, b):
    return (a @ b.flatten(1)).reshape((a.shape[0],) + tuple(b.shape[1:]))


def lokr_delta(w1, w2):
    import torch

    if w2.ndim == 4 and w1.ndim == 2:
        w1 = w1[:, :, None, None]
    return torch.kron(w1, w2.contiguous())


def module_delta(kind: str, f: Mapping):
    """ΔW (without the alpha/rank scale) of a module of type ``kind`` from its factor tensors."""
    if kind == "lora":
        return lora_delta(f["up"], f["down"], f.get("mid"))
    if kind == "loha":
        return loha_delta(f["w1a"], f["w1b"], f["w2a"], f["w2b"], f.get("t1"), f.get("t2"))
    if kind == "lokr":
        w1 = f["k1"] if "k1" in f else f["k1a"] @ f["k1b"]
        if "k2" in f:
            w2 = f["k2"]
        elif "kt2" in f:
            w2 = tucker(f["kt2"], f["k2a"], f["k2b"])
        else:
            w2 = f["k2a"] @ f["k2b"]
        return lokr_delta(w1, w2)
    if kind == "full":
        return f["diff"]
    raise ValueError(f"no ΔW for modules of type {kind!r}")


# -- opening ---------------------------------------------------------------------------------------

LORA_EXTS = (".safetensors", ".pt", ".ckpt", ".bin")


def load_lora(value, name: str | None = None) -> LoraFile:
    """A LoraFile from a path (.safetensors streams; .pt/.ckpt load weights-only), a state dict or a Source."""
    if isinstance(value, LoraFile):
        return value
    if isinstance(value, Source):
        return LoraFile(value, name)
    if isinstance(value, Mapping):
        return LoraFile(DictSource(value, name=name or "lora"), name)
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.exists():
            raise LoraFileError(f"LoRA file {str(path)!r} does not exist.")
        return LoraFile(open_model(path), name or model_name(path))
    raise LoraFileError(f"Expected a LoRA file path or state dict, got {type(value).__name__}.")
