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

The merge is live only while the WebUI's model is the object it went into, under the info made for it:
``model_name`` checks both before each use, and ``model_loaded`` (the WebUI's ``on_model_loaded``
callback, registered by the tab) forgets the merge whenever the WebUI loads a model itself (the user
picked another checkpoint, a VAE change, an infotext's model). Only the live merge's info stays in the
checkpoint registry, so the WebUI's dropdown lists it as it lists a loaded file.
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


MERGE_FILE_MARK = "#supermerger:"


def merge_filename(base_filename: str, name: str) -> str:
    """The stand-in file name of a merge that lives only in memory (model A's, marked; no such file)."""
    return f"{base_filename}{MERGE_FILE_MARK}{name}"


def real_filename(filename: str) -> str:
    """The file behind a checkpoint name (a merge's stand-in name without its mark)."""
    return str(filename).split(MERGE_FILE_MARK, 1)[0]


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
        self.registered: list = []  # CheckpointInfo objects made for merges (only the live one stays registered)
        self._live_model = None  # the live merge: the model object it went into and its CheckpointInfo
        self._live_info = None
        self._own_load = False  # True while this host loads a model (its model_loaded callback is ours)

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
        if MERGE_FILE_MARK in str(info.filename):
            raise SuperMergerError(f"{name!r} is the live merge, which has no file to read.",
                                   "Save it first (Save current merge), then pick the saved file.")
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
        """The live merge's name; None when none is live (never merged, or the WebUI replaced it)."""
        if self._name is not None and self._live_info is not None and not self._still_live():
            self.forget()
        return self._name

    def _still_live(self) -> bool:
        """The WebUI's model is the object the merge went into, under the merge's info, and the checkpoint the
        WebUI has selected is that model (else its next generation loads the selected file over it)."""
        sd_models, shared = _modules()[3], _modules()[5]
        model = getattr(sd_models.model_data, "sd_model", None)
        if model is not self._live_model or getattr(model, "sd_checkpoint_info", None) is not self._live_info:
            return False
        selected = sd_models.checkpoint_aliases.get(getattr(shared.opts, "data", {}).get("sd_model_checkpoint"))
        return selected is None or selected.filename == getattr(model, "sd_model_checkpoint", None)

    def live_checkpoint(self) -> str | None:
        """The title of the WebUI's live model, whatever it is (None before the first load)."""
        sd_models = _modules()[3]
        info = getattr(getattr(sd_models.model_data, "sd_model", None), "sd_checkpoint_info", None)
        return getattr(info, "title", None)

    def forget(self) -> None:
        """The live model is no longer the merge: no name, no merge fields in infotexts, and the merge's
        checkpoint entry leaves the WebUI's list."""
        self._name, self._extra_info = None, {}
        self._live_model = self._live_info = None
        self.unregister_merges()

    def model_loaded(self, sd_model) -> None:
        """The WebUI's ``on_model_loaded`` callback: a load this host did not make replaces the merge."""
        if not self._own_load and self._name is not None:
            self.forget()

    def unregister_merges(self, keep=None) -> None:
        """Take the infos made for earlier merges out of the WebUI's registry (all but ``keep``)."""
        sd_models = _modules()[3]
        for info in [i for i in self.registered if i is not keep]:
            for table in (sd_models.checkpoints_list, sd_models.checkpoint_aliases):
                for key in [k for k, v in table.items() if v is info]:
                    del table[key]
        self.registered = [keep] if keep is not None else []

    def _became_live(self, model, info, name: str, infotext: Mapping[str, Any] | None) -> None:
        """Record the live merge (adapters call this once the weights are in ``model`` under ``info``)."""
        self._live_model, self._live_info = model, info
        self._name = name
        self._extra_info = dict(infotext or {})
        model_field = self._extra_info.get("Model")
        if model_field:
            info.name_for_extra = model_field  # the WebUI's own txt2img writes it as "Model: ..."

    # -- the live model -------------------------------------------------------------------------
    def make_checkpoint_info(self, base, name: str, recipe_text: str = ""):
        """A registered CheckpointInfo for the merge: model A's file name, the merge's name and a fake hash.

        ``calculate_shorthash()`` rewrites ``title`` from ``name`` and re-registers, so ``name`` must be
        the merge's own (a copy that kept A's name would overwrite A's registry entry: §1.7)."""
        self.unregister_merges()
        info = copy.copy(base)
        info.filename = real_filename(base.filename)  # a merge of a live merge stands on the same file
        info.metadata = dict(getattr(base, "metadata", {}) or {})
        try:
            mtime = os.path.getmtime(info.filename)
        except OSError:
            mtime = 0
        self._name_info(info, name, fake_sha256(name, recipe_text), mtime)
        self.registered.append(info)
        return info

    @staticmethod
    def _name_info(info, name: str, sha: str, mtime: float) -> None:
        """Give a merge's info its name, title, aliases and (fake) hash, and register it."""
        from modules import cache  # type: ignore

        sd_models = _modules()[3]
        info.name = info.name_for_extra = info.model_name = name
        info.sha256, info.shorthash, info.hash = sha, sha[:10], sha[:8]
        info.title = info.short_title = f"{name} [{info.shorthash}]"
        # a name that is already another checkpoint's alias (a saved copy of this merge: its file stem)
        # keeps pointing at that file
        taken = sd_models.checkpoint_aliases.get(name)
        info.ids = [info.title, info.shorthash] + ([name] if taken is None or taken is info else [])
        # the hash cache entry that calculate_shorthash() reads, so model A's file is never hashed for it
        cache.cache("hashes")[f"checkpoint/{name}"] = {"mtime": mtime, "sha256": sha}
        info.register()

    def rename_live(self, name: str) -> None:
        """Name the live merge ``name`` (e.g. the stem of the file "Save" would write)."""
        if self.model_name is None or not name or name == self._name:
            return
        shared = _modules()[5]
        info = self._live_info
        self.unregister_merges()
        self._name_info(info, name, info.sha256, self._hash_mtime(info))
        self.registered = [info]
        shared.opts.data["sd_model_checkpoint"] = info.title
        fields = dict(self._extra_info)
        if "Model" in fields:
            from ..history import id_from_text, model_field_with_id

            hid = id_from_text(fields["Model"])
            fields["Model"] = model_field_with_id(name, hid) if hid is not None else name
        self._became_live(self._live_model, info, name, fields)

    @staticmethod
    def _hash_mtime(info) -> float:
        try:
            return os.path.getmtime(info.filename)
        except OSError:
            return 0

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
        self._own_load = True
        try:
            if not self._same_layout(model, state_dict):
                sd_models.load_model(info, already_loaded_state_dict=dict(state_dict))
                model = sd_models.model_data.sd_model
            else:
                self._load_into_live(model, state_dict)
                model.sd_checkpoint_info = info
                model.sd_model_hash = info.shorthash
                model.sd_model_checkpoint = info.filename
        except BaseException:
            self.forget()  # whatever the model holds now, it is not the merge (nor the one before)
            raise
        finally:
            self._own_load = False
        # A file name of its own (no file has it): process_images() finds the merge already loaded under
        # it, and a user who picks model A's file in the WebUI's dropdown gets model A loaded from disk
        # (with A's file name the WebUI would think A loaded and keep the merge under A's name).
        info.filename = model.sd_model_checkpoint = merge_filename(info.filename, name)
        shared.opts.data["sd_model_checkpoint"] = info.title
        self.clear_conditioning_caches()
        devices.torch_gc()
        self._became_live(model, info, name, infotext)

    def merge_and_load(self, recipe, **kwargs):
        """The base's merge and load; then the live merge's infotext fields name its history ID (known
        once the merge was recorded, which may be after it was loaded)."""
        result = super().merge_and_load(recipe, **kwargs)
        self.merge_recorded(result)
        return result

    def merge_recorded(self, result, name: str | None = None) -> None:
        """Images of the live merge carry ``Model: <name> ID <n>`` and its recipe from now on; ``name``
        renames the merge first (the UI gives the stem of the file "Save current merge" would write)."""
        if self.model_name is None:
            return
        if name:
            self.rename_live(name)
        if getattr(result, "history_id", None) is None:
            return
        from .mergeinfo import merge_fields

        recipe = getattr(getattr(result, "plan", None), "recipe", None)
        self._became_live(self._live_model, self._live_info, self._name, merge_fields(self._name, result, recipe))

    def merge_saved(self, path) -> None:
        """The live merge was written to ``path``: the WebUI lists the file (its real hash computed), and the
        live model is shown as that checkpoint, so images name the file and its hash (PNG Info finds it)."""
        if self.model_name is None:
            return
        devices, _, _, sd_models, _, shared = _modules()
        path = os.path.abspath(str(path))
        sd_models.list_models()  # as the WebUI's own merger does after saving; drops the merge's entry
        saved = next((i for i in sd_models.checkpoints_list.values()
                      if os.path.abspath(i.filename) == path), None)
        if saved is None:  # saved outside the WebUI's checkpoint folders: the merge stays as it was
            self._live_info.register()
            return
        saved.calculate_shorthash()
        info = copy.copy(saved)
        info.ids = list(saved.ids)
        info.name_for_extra = self._extra_info.get("Model") or saved.name_for_extra
        info.register()  # under the file's own title and aliases: the same file, with the merge's ID
        self.registered = [info]
        model = self._live_model
        model.sd_checkpoint_info = info
        model.sd_model_hash = info.shorthash
        model.sd_model_checkpoint = info.filename
        shared.opts.data["sd_model_checkpoint"] = info.title
        self.clear_conditioning_caches()
        self._became_live(model, info, info.name, {**self._extra_info, "Model": info.name_for_extra})

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
        if self.model_name is not None:  # only while the merge is the live model
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
