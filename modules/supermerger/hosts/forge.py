"""Forge host (lllyasviel/stable-diffusion-webui-forge, f2.x). Forge keeps A1111's module names but
builds models with its own backend (spec/hosts.md §1.12): ``forge_model_reload()`` rebuilds whenever
``model_data.forge_hash`` differs from ``str(model_data.forge_loading_parameters)``.

A merge goes in like this:
- if the live model is not of the merge's architecture and size, Forge's own path builds model A
  from its file (``forge_loading_parameters`` → ``forge_model_reload()``);
- the merged weights are loaded in place into the model's components (``forge_objects``): the UNet
  and the VAE keep LDM key names; the text encoders are transformers CLIP models, fed through
  diffusers' LDM→transformers key converters;
- LoRA weight backups held by the patchers (original weights, restored when the LoRA set changes)
  are dropped and their ``loaded_hash`` reset, so they cannot be written back over the merge; LoRAs
  are applied again, on the merge, at the next generation;
- the merge's CheckpointInfo goes into ``forge_loading_parameters`` and ``forge_hash`` is set to match,
  so ``process_images()`` does not rebuild from a file.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..errors import SuperMergerError
from .webui import WebUIHost, _modules

UNET = "model.diffusion_model."
VAE = "first_stage_model."
# LDM prefix of each text encoder, by the attribute name Forge gives it in its CLIP wrapper
TEXT_ENCODERS = {
    "clip_l": ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer."),
    "clip_h": ("cond_stage_model.model.",),
    "clip_g": ("conditioner.embedders.1.model.",),
}


def is_forge() -> bool:
    try:
        from modules import sd_models  # type: ignore
    except ImportError:
        return False
    return hasattr(sd_models, "forge_model_reload")


def _sub(state_dict: Mapping, prefix: str) -> dict:
    n = len(prefix)
    return {k[n:]: v for k, v in state_dict.items() if k.startswith(prefix)}


def text_encoder_dict(encoder: str, model, state_dict: Mapping) -> dict:
    """The transformers-layout weights of one text encoder from the LDM dict ({} if the dict has none)."""
    from diffusers.loaders import single_file_utils as sfu

    for prefix in TEXT_ENCODERS[encoder]:
        if not any(k.startswith(prefix) for k in state_dict):
            continue
        if encoder == "clip_l":
            return {"text_model." + k.removeprefix("text_model."): v for k, v in _sub(state_dict, prefix).items()}
        return sfu.convert_open_clip_checkpoint(model, state_dict, prefix=prefix)
    return {}


class ForgeHost(WebUIHost):
    name = "forge"
    cache_slots = 3  # Forge's conditioning caches hold three entries

    def _components(self, model):
        objs = getattr(model, "forge_objects", None)
        if objs is None:
            return None
        return objs

    def _same_layout(self, model, state_dict: Mapping) -> bool:
        objs = self._components(model)
        if objs is None:
            return False  # Forge's FakeInitialModel before the first generation
        unet = objs.unet.model.diffusion_model.state_dict()
        return bool(unet) and all(UNET + k in state_dict and tuple(state_dict[UNET + k].shape) == tuple(v.shape)
                                  for k, v in unet.items())

    def build_base(self, base_info) -> Any:
        """Forge's own loading path for model A's file; returns the new live model."""
        sd_models = _modules()[3]
        params = dict(sd_models.model_data.forge_loading_parameters or {})
        params["checkpoint_info"] = base_info
        sd_models.model_data.forge_loading_parameters = params
        sd_models.forge_model_reload()
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

    def _load_into_live(self, model, state_dict: Mapping) -> None:
        import torch

        objs = self._components(model)
        self.drop_lora_backups(objs)
        unet = objs.unet.model.diffusion_model
        if any(type(p).__name__ == "Params4bit" or p.dtype == torch.uint8 for p in unet.parameters()):
            raise SuperMergerError("The live UNet is stored quantized (NF4/FP4); a merge cannot be loaded into it.",
                                   "Set Forge's 'Diffusion in Low Bits' to Automatic and generate again.")
        parts = [(unet, _sub(state_dict, UNET)), (objs.vae.first_stage_model, _sub(state_dict, VAE))]
        wrapper = objs.clip.cond_stage_model
        for encoder in TEXT_ENCODERS:
            holder = getattr(wrapper, encoder, None)
            if holder is None:
                continue
            te = holder.transformer
            weights = text_encoder_dict(encoder, te, state_dict)
            if not hasattr(te, "text_model"):  # transformers ≥ 5.6: no "text_model." level
                weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
            parts.append((te, weights))
        for module, weights in parts:
            own = module.state_dict()
            absent = [k for k in own if k not in weights and not k.endswith("position_ids")]
            if absent:
                raise SuperMergerError(f"The merged model lacks {len(absent)} weights of the live "
                                       f"{type(module).__name__} (first: {absent[0]}).",
                                       "Merge complete checkpoints of the same kind.")
            module.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)

    def load_state_dict(self, state_dict: Mapping, name: str, *, recipe: Any = None, base: str | None = None,
                        vae: str | None = None, infotext: Mapping[str, Any] | None = None) -> None:
        devices, _, _, sd_models, _, shared = _modules()
        state_dict = self.bake_vae(state_dict, vae)
        model = sd_models.model_data.sd_model
        live_info = getattr(model, "sd_checkpoint_info", None)
        base_info = self._info(base) if base else live_info or sd_models.select_checkpoint()
        if not self._same_layout(model, state_dict):
            model = self.build_base(base_info)
            if not self._same_layout(model, state_dict):
                raise SuperMergerError("The merge does not fit model A's architecture as Forge builds it.",
                                       "Check that model A is an SD1, SD2 or SDXL checkpoint like the others.")
        self._load_into_live(model, state_dict)
        recipe_text = recipe.to_json() if hasattr(recipe, "to_json") else str(recipe or "")
        info = self.make_checkpoint_info(base_info, name, recipe_text)
        model.sd_checkpoint_info = info
        model.sd_model_hash = info.shorthash
        model.sd_model_checkpoint = info.filename
        data = sd_models.model_data
        data.forge_loading_parameters = {**(data.forge_loading_parameters or {}), "checkpoint_info": info}
        data.forge_hash = str(data.forge_loading_parameters)  # process_images() will not rebuild over the merge
        shared.opts.data["sd_model_checkpoint"] = info.title
        self.clear_conditioning_caches()
        devices.torch_gc()
        self._name = name
        self._extra_info = dict(infotext or {})

    def unload(self) -> None:
        devices = _modules()[0]
        try:
            from backend import memory_management  # type: ignore

            memory_management.unload_all_models()
            memory_management.soft_empty_cache()
        except ImportError:  # pragma: no cover - only inside Forge
            pass
        devices.torch_gc()
