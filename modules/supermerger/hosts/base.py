"""The one interface through which the UI, the XY plot and the CLI use a live model.

A host knows the models it can offer, reads checkpoints (through its own cache when it has one),
puts a merged state dict into its live model without saving a file, generates, and unloads.
Everything host-specific lives in the adapters (``diffusers_host``, ``webui``, ``forge``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import Any, Mapping


@dataclass
class GenParams:
    """Generation parameters, named as in the WebUI's txt2img."""
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1  # -1: a random seed, drawn once per call
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    scheduler: str = "Automatic"  # the WebUI's "Schedule type" (Automatic, Karras, Exponential, ...)
    width: int = 512
    height: int = 512
    batch_size: int = 1
    batch_count: int = 1  # the WebUI's n_iter
    clip_skip: int = 1
    # hires fix (only where the host has it)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0: the same number of steps as the first pass
    denoising_strength: float = 0.7
    # one prompt per image of the batch (the XYZ axis prompt3); when given it replaces ``prompt``
    # and its length is the batch size
    prompts: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # host-specific extras (e.g. WebUI script args)

    def with_(self, **changes) -> "GenParams":
        return replace(self, **changes)

    def batch_prompts(self) -> list[str]:
        """The prompt of each image in one batch."""
        return list(self.prompts) if self.prompts else [self.prompt] * max(1, self.batch_size)


@dataclass
class Generated:
    """Images (PIL) and one infotext per image, in the WebUI's format."""
    images: list = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    seconds: float = 0.0


class Host(ABC):
    """A place where merged models run. Adapters implement every abstract method."""

    name: str = "host"

    # -- what the host knows ----------------------------------------------------------------
    @abstractmethod
    def list_checkpoints(self) -> list[str]:
        """Checkpoint names the user can pick (as the host shows them)."""

    def list_vaes(self) -> list[str]:
        return []

    def list_loras(self) -> list[str]:
        return []

    def lora_dirs(self) -> list[str]:
        """The folders ``list_loras`` lists (its names are relative to them): where LoRA names are
        looked up and where the LoRA tab writes new LoRAs (the first)."""
        return []

    def samplers(self) -> list[str]:
        return []

    @abstractmethod
    def checkpoint_path(self, name: str) -> str:
        """The file of a checkpoint the host lists (for merges that stream from disk)."""

    def read_state_dict(self, name: str) -> Mapping:
        """A checkpoint's tensors; hosts with a model cache answer from it."""
        from ..io.sources import open_model

        with open_model(self.checkpoint_path(name)) as src:
            return {k: src.tensor(k) for k in src.tensors}

    # -- the live model -----------------------------------------------------------------------
    @abstractmethod
    def load_state_dict(self, state_dict: Mapping, name: str, *, recipe: Any = None) -> None:
        """Make ``state_dict`` (original LDM/SGM keys) the live model, named ``name``, without
        saving it. The host keeps no reference to ``state_dict`` afterwards."""

    def merge_and_load(self, recipe, *, models: Mapping | None = None, name: str | None = None, **merge_kwargs):
        """Merge per ``recipe`` and make the result the live model. Hosts that can merge straight into
        their live parameters override this; the default merges in memory and loads the result.
        The merge is recorded in the history (``history``, default True) only once it is the live model:
        a load that fails records nothing."""
        import inspect

        from ..api import merge
        from .mergeinfo import merge_fields

        record = merge_kwargs.pop("history", True)
        result = merge(recipe, models=models, history="deferred" if record else False, **merge_kwargs)
        name = name or result.name
        extra = {}
        takes_fields = "infotext" in inspect.signature(self.load_state_dict).parameters
        if takes_fields:
            # images of the merge name its recipe (and, once recorded, its history ID), as the standalone host's do
            extra["infotext"] = merge_fields(name, result, result.plan.recipe)
        try:
            self.load_state_dict(result.state_dict, name, recipe=recipe, **extra)
        finally:
            result.state_dict = None  # the merged copy is not kept
        if record and result.record_history() is not None and takes_fields:
            self.set_merge_fields(merge_fields(name, result, result.plan.recipe))
        return result

    def set_merge_fields(self, fields: Mapping[str, Any]) -> None:
        """The infotext fields that images of the live merge carry (``mergeinfo.merge_fields``), once its
        history ID is known. Hosts whose ``load_state_dict`` takes ``infotext`` override it."""

    @property
    @abstractmethod
    def model_name(self) -> str | None:
        """The name of the live model (None when none is loaded)."""

    @abstractmethod
    def generate(self, params: GenParams) -> Generated:
        """txt2img with the live model."""

    def interrupt(self) -> None:
        """Stop a running ``generate`` as soon as the host can (the UI's Stop); a no-op where it cannot."""

    @abstractmethod
    def unload(self) -> None:
        """Free the live model's memory."""
