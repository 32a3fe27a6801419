"""Forge host (lllyasviel/stable-diffusion-webui-forge, f2.x). Forge keeps A1111's module names but
builds models with its own backend (spec/hosts.md §1.12): ``forge_model_reload()`` rebuilds whenever
``model_data.forge_hash`` differs from ``str(model_data.forge_loading_parameters)``.

A merge goes in like this:
- if the live model is not of the merge's architecture and size (Forge's ``FakeInitialModel`` before
  the first generation, or another architecture), Forge's own path builds model A — the recipe's, not
  whatever checkpoint happens to be selected — from its file; otherwise the live model is reused;
- every tensor of the live components (``forge_objects``: the UNet and the VAE keep LDM key names, the
  text encoders are transformers CLIP models, fed through diffusers' LDM→transformers key converters)
  is matched to a merged tensor by the component's own names, seen through wrappers Forge puts in
  (its textual-inversion embedding holds the token embedding as ``….token_embedding.wrapped``);
- all of it is checked first (keys, shapes, dtypes, quantized storage): a merge that does not fit
  is refused with the live model untouched (LiveModelError); only then is anything written;
- the writes happen under ``torch.inference_mode()``: Forge creates its parameters as inference
  tensors, which refuse in-place updates outside it;
- LoRA weight backups held by the patchers (original weights, restored when the LoRA set changes)
  are dropped and their ``loaded_hash`` reset, so they cannot be written back over the merge; LoRAs
  are applied again, on the merge, at the next generation;
- the merge's CheckpointInfo goes into ``forge_loading_parameters`` and ``forge_hash`` is set to match,
  so ``process_images()`` does not rebuild from a file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import LiveModelError, some
from .webui import WebUIHost, _modules

UNET = "model.diffusion_model."
VAE = "first_stage_model."
# LDM prefix of each text encoder, by the attribute name Forge gives it in its CLIP wrapper
TEXT_ENCODERS = {
    "clip_l": ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer."),
    "clip_h": ("cond_stage_model.model.",),
    "clip_g": ("conditioner.embedders.1.model.",),
}
# Live tensors a merge may lack: Forge's own loader tolerates their absence too (backend/loader.py
# ignores the SD1 text encoders' missing projection, position ids and logit scale)
OPTIONAL = ("position_ids", "text_projection.weight", "logit_scale")


def is_forge() -> bool:
    try:
        from modules import sd_models  # type: ignore
    except ImportError:
        return False
    return hasattr(sd_models, "forge_model_reload")


def _sub(state_dict: Mapping, prefix: str) -> dict:
    n = len(prefix)
    return {k[n:]: v for k, v in state_dict.items() if k.startswith(prefix)}


def text_encoder_dict(encoder: str, model, state_dict: Mapping) -> tuple[str, dict]:
    """The LDM prefix found and the transformers-layout weights of one text encoder from the LDM dict
    (``("", {})`` if the dict has none)."""
    for prefix in TEXT_ENCODERS[encoder]:
        if not any(k.startswith(prefix) for k in state_dict):
            continue
        if encoder == "clip_l":
            return prefix, {"text_model." + k.removeprefix("text_model."): v
                            for k, v in _sub(state_dict, prefix).items()}
        from diffusers.loaders import single_file_utils as sfu

        return prefix, sfu.convert_open_clip_checkpoint(model, state_dict, prefix=prefix)
    return "", {}


@dataclass
class Part:
    """One live component and the merged weights meant for it, named as the component names them."""
    label: str  # how messages name its keys: the LDM prefix (or the encoder's name)
    module: Any  # a torch.nn.Module
    weights: dict = field(default_factory=dict)


def live_tensors(module) -> list[tuple[Any, list[str]]]:
    """Each distinct tensor of ``module``'s state dict with all the names it has there (a wrapper that
    re-exposes its inner module's weight, as Forge's textual-inversion embedding does, gives one tensor
    two names)."""
    by_id: dict[int, tuple[Any, list[str]]] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        by_id.setdefault(id(tensor), (tensor, []))[1].append(name)
    return list(by_id.values())


def merge_key(names: list[str], weights: Mapping) -> str | None:
    """The merged key for a live tensor known by ``names``: a name itself, else a name without one
    wrapper level (a non-numeric path segment such as ``wrapped``), whatever the wrapper is called."""
    for name in names:
        if name in weights:
            return name
    for name in names:
        parts = name.split(".")
        for i, segment in enumerate(parts[:-1]):
            if segment.isdigit():
                continue
            candidate = ".".join(parts[:i] + parts[i + 1:])
            if candidate in weights:
                return candidate
    return None


def is_quantized(tensor) -> bool:
    """NF4/FP4 (bitsandbytes) or GGUF storage: values that a plain copy cannot write."""
    return (type(tensor).__name__ in ("Params4bit", "ParameterGGUF") or bool(getattr(tensor, "bnb_quantized", False))
            or getattr(tensor, "gguf_cls", None) is not None or str(getattr(tensor, "dtype", "")) == "torch.uint8")


def _shape(t) -> str:
    return "×".join(map(str, tuple(t.shape))) or "scalar"


def plan_writes(parts: list[Part]) -> list[tuple[Any, Any]]:
    """(live tensor, merged tensor) for every live tensor, after checking that all of them fit: the same
    shape, a dtype a copy can cast to, storage that is not quantized. Raises LiveModelError naming the
    first few offenders when anything does not fit; nothing is written here."""
    missing, shapes, dtypes, quantized = [], [], [], []
    writes = []
    for part in parts:
        for tensor, names in live_tensors(part.module):
            shown = f"{part.label}{min(names, key=len)}"
            key = merge_key(names, part.weights)
            if key is None:
                if not any(n.endswith(OPTIONAL) for n in names):
                    missing.append(shown)
                continue
            source = part.weights[key]
            if is_quantized(tensor):
                quantized.append(shown)
            elif tuple(source.shape) != tuple(tensor.shape):
                shapes.append(f"{shown} ({_shape(source)} in the merge, {_shape(tensor)} live)")
            elif source.is_floating_point() != tensor.is_floating_point():
                dtypes.append(f"{shown} ({source.dtype} in the merge, {tensor.dtype} live)")
            else:
                writes.append((tensor, source))
    nothing = "nothing was loaded and the live model is unchanged"
    if quantized:
        raise LiveModelError(f"The live model is stored quantized (NF4/FP4/GGUF: {some(quantized)}), so a merge "
                             f"cannot be written into it; {nothing}.",
                             "Set Forge's 'Diffusion in Low Bits' to Automatic, generate once, and merge again.")
    if missing:
        raise LiveModelError(f"The merge lacks {len(missing)} weight{'s' if len(missing) > 1 else ''} of the live "
                             f"model ({some(missing)}); {nothing}.",
                             "Merge complete checkpoints (UNet, VAE and text encoder) of model A's architecture.")
    if shapes:
        raise LiveModelError(f"{len(shapes)} weight{'s' if len(shapes) > 1 else ''} of the merge "
                             f"{'have' if len(shapes) > 1 else 'has'} another shape than the live model's "
                             f"({'; '.join(shapes[:3])}{f' and {len(shapes) - 3} more' if len(shapes) > 3 else ''});"
                             f" {nothing}.", "Merge models of the same architecture and size as model A.")
    if dtypes:
        raise LiveModelError(f"{len(dtypes)} weight{'s' if len(dtypes) > 1 else ''} of the merge cannot be cast to "
                             f"the live model's type ({'; '.join(dtypes[:3])}); {nothing}.",
                             "Merge checkpoints whose weights are floating point.")
    return writes


def write(writes: list[tuple[Any, Any]]) -> None:
    """Copy each merged tensor into its live tensor (cast to its dtype and device), in inference mode:
    Forge builds its models under ``torch.inference_mode()``, whose tensors refuse in-place updates
    outside it."""
    import torch

    with torch.inference_mode():
        for tensor, source in writes:
            tensor.copy_(source)


class ForgeHost(WebUIHost):
    name = "forge"
    cache_slots = 3  # Forge's conditioning caches hold three entries

    def _components(self, model):
        return getattr(model, "forge_objects", None)  # None: Forge's FakeInitialModel before the first generation

    def _same_layout(self, model, state_dict: Mapping) -> bool:
        objs = self._components(model)
        if objs is None:
            return False
        unet = objs.unet.model.diffusion_model.state_dict()
        return bool(unet) and all(UNET + k in state_dict and tuple(state_dict[UNET + k].shape) == tuple(v.shape)
                                  for k, v in unet.items())

    def base_info(self, base: str | None, recipe: Any, model):
        """The CheckpointInfo behind the merge: ``base`` if given, else the recipe's model A (a file the
        WebUI lists, or one it is told about), else the live model's, else the selected checkpoint."""
        sd_models = _modules()[3]
        if base:
            info = sd_models.get_closet_checkpoint_match(base)
            if info is None:
                raise LiveModelError(f"The WebUI knows no checkpoint {base!r}.", "Refresh the checkpoint list.")
            return info
        path = getattr(recipe, "model_a", None)
        if path and os.path.isfile(str(path)):
            target = os.path.normcase(os.path.realpath(str(path)))
            merges = {id(i) for i in self.registered}
            for info in sd_models.checkpoints_list.values():
                if id(info) not in merges and os.path.normcase(os.path.realpath(info.filename)) == target:
                    return info
            return sd_models.CheckpointInfo(str(path))
        live = getattr(model, "sd_checkpoint_info", None)
        return live if live is not None else sd_models.select_checkpoint()

    def build_base(self, base_info) -> Any:
        """Forge's own loading path for model A's file; returns the new live model. The selected checkpoint
        becomes A, so that what the WebUI shows is what is live even if the merge is refused after this."""
        sd_models, shared = _modules()[3], _modules()[5]
        params = dict(sd_models.model_data.forge_loading_parameters or {})
        params["checkpoint_info"] = base_info
        sd_models.model_data.forge_loading_parameters = params
        self._own_load = True  # the model_loaded callback Forge calls is this host's own doing
        try:
            sd_models.forge_model_reload()
        finally:
            self._own_load = False
        shared.opts.data["sd_model_checkpoint"] = base_info.title
        self.forget()  # whatever merge was live is gone
        return sd_models.model_data.sd_model

    @staticmethod
    def drop_lora_backups(objs) -> None:
        patchers = [objs.unet, getattr(objs.clip, "patcher", None)]
        for patcher in patchers:
            loader = getattr(patcher, "lora_loader", None)
            if loader is None:
                continue
            if getattr(loader, "backup", None):
                loader.backup = {}
            loader.loaded_hash = None  # differs from any LoRA set: they are applied again, on the merge

    def parts(self, model, state_dict: Mapping) -> list[Part]:
        """The live components and the merged weights for each, in the components' own naming."""
        objs = self._components(model)
        parts = [Part(UNET, objs.unet.model.diffusion_model, _sub(state_dict, UNET)),
                 Part(VAE, objs.vae.first_stage_model, _sub(state_dict, VAE))]
        wrapper = objs.clip.cond_stage_model
        for encoder in TEXT_ENCODERS:
            holder = getattr(wrapper, encoder, None)
            if holder is None:
                continue
            te = holder.transformer
            prefix, weights = text_encoder_dict(encoder, te, state_dict)
            if not hasattr(te, "text_model"):  # transformers ≥ 5.6: no "text_model." level
                weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
            label = prefix if encoder == "clip_l" and prefix else f"{encoder} text encoder: "
            parts.append(Part(label, te, weights))
        return parts

    def _load_into_live(self, model, state_dict: Mapping) -> None:
        """All or nothing: every component is checked before the first tensor is written."""
        writes = plan_writes(self.parts(model, state_dict))
        self.drop_lora_backups(self._components(model))
        write(writes)

    def load_state_dict(self, state_dict: Mapping, name: str, *, recipe: Any = None, base: str | None = None,
                        vae: str | None = None, infotext: Mapping[str, Any] | None = None) -> None:
        devices, _, _, sd_models, _, shared = _modules()
        state_dict = self.bake_vae(state_dict, vae)
        data = sd_models.model_data
        model = data.sd_model
        base_info = self.base_info(base, recipe, model)
        if not self._same_layout(model, state_dict):
            model = self.build_base(base_info)
            if not self._same_layout(model, state_dict):
                raise LiveModelError("The merge does not fit model A's architecture as Forge builds it; the live "
                                     "model is model A as Forge loads it from its file.",
                                     "Check that model A is an SD1, SD2 or SDXL checkpoint like the others.")
        try:
            self._load_into_live(model, state_dict)
        except LiveModelError:
            raise
        except Exception as e:  # a write failed half way (out of memory...): let Forge rebuild from the file
            data.forge_hash = None
            self.forget()
            raise LiveModelError(f"The merge could not be written into the live model ({type(e).__name__}: {e}); "
                                 "Forge loads the selected checkpoint from its file again at the next generation.",
                                 "Free memory (smaller batch, fewer models loaded) and merge again.") from e
        recipe_text = recipe.to_json() if hasattr(recipe, "to_json") else str(recipe or "")
        info = self.make_checkpoint_info(base_info, name, recipe_text)
        model.sd_checkpoint_info = info
        model.sd_model_hash = info.shorthash
        model.sd_model_checkpoint = info.filename
        data.forge_loading_parameters = {**(data.forge_loading_parameters or {}), "checkpoint_info": info}
        data.forge_hash = str(data.forge_loading_parameters)  # process_images() will not rebuild over the merge
        shared.opts.data["sd_model_checkpoint"] = info.title
        self.clear_conditioning_caches()
        devices.torch_gc()
        self._became_live(model, info, name, infotext)

    def merge_saved(self, path) -> None:
        """As the WebUI's: the live merge is shown as its saved file; Forge's loading parameters name that
        file too (with the hash to match), so the next generation still uses the live model."""
        super().merge_saved(path)
        if self.model_name is not None:
            data = _modules()[3].model_data
            data.forge_loading_parameters = {**(data.forge_loading_parameters or {}), "checkpoint_info": self._info}
            data.forge_hash = str(data.forge_loading_parameters)

    def processing_object(self, params):
        p = super().processing_object(params)
        if getattr(p, "scheduler", None) is None:
            # Forge's processing has no default schedule type (None) and "corrects" it to Automatic with a
            # warning in the console: say Automatic, as its own txt2img tab does
            p.scheduler = params.scheduler or "Automatic"
        return p

    def unload(self) -> None:
        devices = _modules()[0]
        try:
            from backend import memory_management  # type: ignore

            memory_management.unload_all_models()
            memory_management.soft_empty_cache()
        except ImportError:  # pragma: no cover - only inside Forge
            pass
        devices.torch_gc()
