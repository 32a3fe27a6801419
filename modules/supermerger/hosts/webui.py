"""AUTOMATIC1111 WebUI host (≥ 1.6). Runs only inside the WebUI: every WebUI module is imported inside
the functions that use it. Facts used here are in spec/hosts.md Part 1 (§1.7–1.10).

How a merge becomes the live model without a file (§1.8):
- the weights go into ``shared.sd_model`` in place (hijack undone around ``load_state_dict``, which
  also resets the Lora extension's weight backups) — or, when the architecture differs, the model is
  rebuilt with ``sd_models.load_model(info, already_loaded_state_dict=...)``;
- a CheckpointInfo that names the merge is registered (it keeps model A's file name), and
  ``opts.sd_model_checkpoint`` points at it, so ``process_images()`` finds the live model already
  loaded and does not reload a file over the merge;
- the conditioning caches, keyed by the checkpoint info and not by the weights, are cleared;
- a VAE the user picked is baked into the merged dict first; otherwise the merge's own VAE is kept.
"""

from __future__ import annotations

import copy
import hashlib
import os
from typing import Any, Mapping

from ..errors import SuperMergerError
from .base import GenParams, Generated, Host

VAE_PREFIX = "first_stage_model."
WEIGHT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")


def _modules():
    """The WebUI modules this adapter uses (one place, so the test double knows exactly what to fake)."""
    from modules import devices, processing, sd_hijack, sd_models, sd_vae, shared  # type: ignore

    return devices, processing, sd_hijack, sd_models, sd_vae, shared


def fake_sha256(name: str, recipe_text: str = "") -> str:
    """A stable stand-in hash for a merge that has no file (so the WebUI never hashes model A's file for it)."""
    return hashlib.sha256(f"supermerger:{name}:{recipe_text}".encode("utf-8")).hexdigest()


class WebUIHost(Host):
    name = "webui"
    #: slots in the WebUI's conditioning caches ([cond, key] pairs); Forge has three
    cache_slots = 2

    def __init__(self):
        self._name: str | None = None
        self._extra_info: dict[str, Any] = {}
        self.registered: list = []  # CheckpointInfo objects made for merges

    # -- what the WebUI knows -------------------------------------------------------------------
    def list_checkpoints(self) -> list[str]:
        sd_models = _modules()[3]
        return [info.title for info in sd_models.checkpoints_list.values()]

    def list_vaes(self) -> list[str]:
        sd_vae = _modules()[4]
        return list(sd_vae.vae_dict)

    def lora_dirs(self) -> list[str]:
        shared = _modules()[5]
        folder = getattr(shared.cmd_opts, "lora_dir", None)
        return [folder] if folder and os.path.isdir(folder) else []

    def list_loras(self) -> list[str]:
        folders = self.lora_dirs()
        if not folders:
            return []
        folder = folders[0]
        out = []
        for root, _, files in os.walk(folder):
            out += [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/") for f in files
                    if f.lower().endswith((".safetensors", ".pt", ".ckpt"))]
        return sorted(out)

    def _info(self, name: str):
        sd_models = _modules()[3]
        info = sd_models.get_closet_checkpoint_match(name)
        if info is None:
            raise SuperMergerError(f"The WebUI knows no checkpoint {name!r}.", "Refresh the checkpoint list.")
        return info

    def checkpoint_path(self, name: str) -> str:
        return self._info(name).filename

    def read_state_dict(self, name: str) -> Mapping:
        """From the WebUI's checkpoint cache (``sd_checkpoint_cache``) when it holds the model, else from disk."""
        sd_models = _modules()[3]
        info = self._info(name)
        cached = getattr(sd_models, "checkpoints_loaded", {}).get(info)
        if cached is not None:
            return cached
        return sd_models.read_state_dict(info.filename, map_location="cpu")

    @property
    def model_name(self) -> str | None:
        return self._name

    # -- the live model -------------------------------------------------------------------------
    def make_checkpoint_info(self, base, name: str, recipe_text: str = ""):
        """A registered CheckpointInfo for the merge: model A's file name, the merge's name and a fake hash.

        ``calculate_shorthash()`` rewrites ``title`` from ``name`` and re-registers, so ``name`` must be
        the merge's own (a copy that kept A's name would overwrite A's registry entry: §1.7)."""
        from modules import cache  # type: ignore

        info = copy.copy(base)
        sha = fake_sha256(name, recipe_text)
        info.name = name
        info.name_for_extra = name
        info.model_name = name
        info.sha256 = sha
        info.shorthash = sha[:10]
        info.hash = sha[:8]
        info.title = f"{name} [{info.shorthash}]"
        info.short_title = info.title
        info.ids = [name, info.title, info.shorthash]
        info.metadata = dict(getattr(base, "metadata", {}) or {})
        # the hash cache entry that calculate_shorthash() reads, so model A's file is never hashed for it
        hashes = cache.cache("hashes")
        try:
            mtime = os.path.getmtime(base.filename)
        except OSError:
            mtime = 0
        hashes[f"checkpoint/{name}"] = {"mtime": mtime, "sha256": sha}
        info.register()
        self.registered.append(info)
        return info

    def _same_layout(self, model, state_dict: Mapping) -> bool:
        if model is None or not hasattr(model, "state_dict"):
            return False
        own = model.state_dict()
        unet = [k for k in own if k.startswith("model.diffusion_model.")]
        return bool(unet) and all(k in state_dict and tuple(state_dict[k].shape) == tuple(own[k].shape)
                                  for k in unet)

    def _load_into_live(self, model, state_dict: Mapping) -> None:
        """In place: undo the hijack (it renames text-encoder keys), load, hijack again."""
        sd_hijack = _modules()[2]
        sd_hijack.model_hijack.undo_hijack(model)
        try:
            result = model.load_state_dict(dict(state_dict), strict=False)
        finally:
            sd_hijack.model_hijack.hijack(model)
        # noise-schedule buffers and the like may be absent from a merge; weights may not
        missing = [k for k in result.missing_keys if k.startswith(WEIGHT_PREFIXES)]
        if missing:
            raise SuperMergerError(f"The merged model lacks {len(missing)} weights of the live model "
                                   f"(first: {missing[0]}).", "Merge complete checkpoints of the same kind.")

    def clear_conditioning_caches(self) -> None:
        processing = _modules()[1]
        for cls in (processing.StableDiffusionProcessing, processing.StableDiffusionProcessingTxt2Img):
            for attr in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
                if attr in vars(cls):
                    setattr(cls, attr, [None] * len(getattr(cls, attr) or [None] * self.cache_slots))

    def bake_vae(self, state_dict: Mapping, vae: str | None) -> Mapping:
        """Put a user-chosen VAE (a name from ``list_vaes()``) into the merged dict."""
        if not vae or vae in ("None", "Automatic"):
            return state_dict
        sd_vae = _modules()[4]
        path = sd_vae.vae_dict.get(vae)
        if path is None:
            raise SuperMergerError(f"The WebUI knows no VAE {vae!r}.", "Refresh the VAE list.")
        out = dict(state_dict)
        for k, v in sd_vae.load_vae_dict(path, map_location="cpu").items():
            out[VAE_PREFIX + k] = v
        return out

    def load_state_dict(self, state_dict: Mapping, name: str, *, recipe: Any = None, base: str | None = None,
                        vae: str | None = None, infotext: Mapping[str, Any] | None = None) -> None:
        """``base``: the checkpoint whose file stands behind the merge (model A); default: the live one."""
        devices, _, _, sd_models, _, shared = _modules()
        state_dict = self.bake_vae(state_dict, vae)
        model = sd_models.model_data.sd_model
        base_info = self._info(base) if base else getattr(model, "sd_checkpoint_info", None)
        if base_info is None:
            base_info = sd_models.select_checkpoint()
        recipe_text = recipe.to_json() if hasattr(recipe, "to_json") else str(recipe or "")
        info = self.make_checkpoint_info(base_info, name, recipe_text)
        if self._same_layout(model, state_dict):
            self._load_into_live(model, state_dict)
            model.sd_checkpoint_info = info
            model.sd_model_hash = info.shorthash
            model.sd_model_checkpoint = info.filename
        else:
            sd_models.load_model(info, already_loaded_state_dict=dict(state_dict))
        shared.opts.data["sd_model_checkpoint"] = info.title
        self.clear_conditioning_caches()
        devices.torch_gc()
        self._name = name
        self._extra_info = dict(infotext or {})

    def set_merge_fields(self, fields: Mapping[str, Any]) -> None:
        self._extra_info = dict(fields)

    # -- generating ---------------------------------------------------------------------------
    def processing_object(self, params: GenParams):
        processing, shared = _modules()[1], _modules()[5]
        # The WebUI saves the images (and a batch's grid) where txt2img's go, as its settings say; their
        # infotext carries the merge (Model with its ID) through extra_generation_params.
        keep = bool(params.extra.get("save_images", True))
        prompt, batch_size = params.prompt, params.batch_size
        if params.prompts:  # one prompt per image: the WebUI takes a list of batch size × n_iter prompts
            prompt, batch_size = list(params.prompts) * max(1, params.batch_count), len(params.prompts)
        kwargs = dict(
            prompt=prompt, negative_prompt=params.negative_prompt, seed=params.seed, steps=params.steps,
            cfg_scale=params.cfg_scale, sampler_name=params.sampler, width=params.width, height=params.height,
            batch_size=batch_size, n_iter=params.batch_count, do_not_save_samples=not keep,
            do_not_save_grid=not keep, override_settings={"CLIP_stop_at_last_layers": params.clip_skip},
            outpath_samples=getattr(shared.opts, "outdir_txt2img_samples", ""),
            outpath_grids=getattr(shared.opts, "outdir_txt2img_grids", ""),
        )
        if params.enable_hr:
            kwargs.update(enable_hr=True, hr_scale=params.hr_scale, hr_upscaler=params.hr_upscaler,
                          hr_second_pass_steps=params.hr_second_pass_steps,
                          denoising_strength=params.denoising_strength)
        p = processing.StableDiffusionProcessingTxt2Img(**kwargs)
        if params.scheduler and params.scheduler != "Automatic":
            p.scheduler = params.scheduler  # WebUI ≥ 1.9 ("Schedule type")
        p.extra_generation_params.update(self._extra_info)
        scripts = params.extra.get("scripts")
        if scripts is not None:  # the user's txt2img scripts and their argument values (from the UI)
            p.scripts = scripts
            p.script_args = list(params.extra.get("script_args", []))
        return p

    def generate(self, params: GenParams) -> Generated:
        processing, shared = _modules()[1], _modules()[5]
        p = self.processing_object(params)
        shared.state.begin(job="supermerger")
        try:
            processed = processing.process_images(p)
        finally:
            shared.state.end()
            if hasattr(p, "close"):
                p.close()
        first = getattr(processed, "index_of_first_image", 0)
        return Generated(list(processed.images[first:]), list(processed.infotexts[first:]),
                         list(processed.all_seeds))

    def interrupt(self) -> None:
        """The WebUI's own Interrupt: ``process_images`` stops at the next step."""
        _modules()[5].state.interrupt()

    def unload(self) -> None:
        devices, sd_models = _modules()[0], _modules()[3]
        sd_models.unload_model_weights()
        devices.torch_gc()
