"""Standalone host: diffusers pipelines built offline from original-layout (LDM/SGM key) state dicts.

The pipeline is built once per architecture and size. Every later merge goes into the parameters it
already has (``load_state_dict`` copies; ``merge_and_load`` lets the merge engine write straight into
them), so a swap allocates no second model and keeps every parameter's tensor and dtype.

Key mapping: diffusers' own single-file converters, run once on shape-only ("meta") tensors, tell
which LDM key feeds which pipeline parameter; the result is kept as a table of (LDM key → parameter,
how). Most parameters are the LDM tensor as is or reshaped (VAE attention 1×1 convs → linear); the
OpenCLIP encoders' fused ``in_proj`` feeds three parameters (q, k, v), which this host makes views of
one buffer so that the fused tensor has a home too; ``text_projection`` is stored transposed.
"""

from __future__ import annotations

import gc
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .. import paths
from ..errors import ArchitectureError, ModelFileError, SuperMergerError
from . import samplers as sampler_table
from .base import GenParams, Generated, Host
from .diffusers_configs import UNET, VAE, PipelineLayout, layout_for
from .infotext import format_infotext
from .mergeinfo import RECIPE_FIELD

MODEL_EXTS = (".safetensors", ".ckpt", ".pt", ".pth")


@dataclass
class _Target:
    """Where one LDM tensor lives in the pipeline."""
    tensor: Any  # the parameter (or the fused q/k/v buffer, for kind "qkv")
    kind: str  # "same" (reshaped if needed) | "qkv" | "T"
    ldm_shape: tuple


def _strip_text_model(converted: dict, model) -> dict:
    # transformers ≥ 5.6 flattened CLIPTextModel (no "text_model." level); the converters still emit it.
    if hasattr(model, "text_model"):
        return converted
    return {k.removeprefix("text_model."): v for k, v in converted.items()}


def _key_map(component: str, model, shapes: Mapping[str, tuple], spec: dict | None = None) -> dict[str, tuple]:
    """{diffusers key: (ldm key, kind, index)} for one component, from the converters run on meta tensors."""
    import torch
    from diffusers.loaders import single_file_utils as sfu

    if component == "unet":
        prefix = UNET
    elif component == "vae":
        prefix = VAE
    else:
        prefix = spec["prefix"]
    probe = {k: torch.empty(s, device="meta") for k, s in shapes.items() if k.startswith(prefix)}
    by_id = {id(t): k for k, t in probe.items()}
    if component == "unet":
        converted = sfu.convert_ldm_unet_checkpoint(probe, dict(model.config))
    elif component == "vae":
        converted = sfu.convert_ldm_vae_checkpoint(probe, dict(model.config))
    elif spec["kind"] == "clip_l":
        # the SDXL prefix ends in "transformer.", followed by "text_model." which the model may lack
        converted = sfu.convert_ldm_clip_checkpoint(probe, remove_prefix=prefix.removesuffix("text_model."))
        converted = _strip_text_model(converted, model)
    else:
        converted = sfu.convert_open_clip_checkpoint(model, probe, prefix=prefix)
        converted = _strip_text_model(converted, model)
    wanted = model.state_dict(keep_vars=True)
    table: dict[str, tuple] = {}
    for dkey, t in converted.items():
        if dkey not in wanted:
            continue  # e.g. position_ids (not persistent) or SD2's unused last encoder layer
        if id(t) in by_id:
            table[dkey] = (by_id[id(t)], "same", 0)
        elif t._base is not None and id(t._base) in by_id:
            table[dkey] = (by_id[id(t._base)], "same", 0)
        elif dkey.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "q_proj.bias", "k_proj.bias",
                            "v_proj.bias")):
            layer = dkey.split("encoder.layers.")[1].split(".")[0]
            part = "weight" if dkey.endswith("weight") else "bias"
            ldm = f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{part}"
            table[dkey] = (ldm, "qkv", "qkv".index(dkey.split("_proj.")[0][-1]))
        elif dkey.endswith("text_projection.weight"):
            table[dkey] = (prefix + "text_projection", "T", 0)
        else:
            raise SuperMergerError(f"No rule maps the converted key {dkey!r} back to the checkpoint (a bug).")
    missing = [k for k, v in wanted.items() if k not in table and k in dict(model.named_parameters())]
    if missing:
        raise ArchitectureError(f"{component}: the checkpoint has no weights for {len(missing)} parameters "
                                f"(first: {missing[0]}).", "The checkpoint is incomplete or of another layout.")
    return table


class DiffusersHost(Host):
    """SD1.x / SD2.x / SDXL txt2img with diffusers, offline.

    ``models_dir``/``vae_dir``/``lora_dir``: folders to list; ``dtype``: the pipeline's dtype
    (float32 on CPU; float16 or bfloat16 on a GPU); ``work_dir``: where the tokenizer files are kept;
    ``cache``: a ``ModelCache`` for the checkpoints merges read (True: one of two models; False or
    None: merges stream from the files, as a one-shot command wants).

    Images of a merge made by ``merge_and_load`` carry the merge's history ID in their ``Model``
    field and the recipe in a ``SuperMerger recipe`` field (see ``mergeinfo``).
    """

    name = "diffusers"

    def __init__(self, models_dir: str | os.PathLike | None = None, *, vae_dir=None, lora_dir=None,
                 device: str = "cpu", dtype: str = "float32", work_dir: str | os.PathLike | None = None,
                 cache: "ModelCache | bool | None" = True):
        from .cache import ModelCache

        self.models_dir = Path(models_dir) if models_dir else None
        self.vae_dir = Path(vae_dir) if vae_dir else None
        self.lora_dir = Path(lora_dir) if lora_dir else None
        self.device = device
        self.dtype_name = dtype
        self.work_dir = Path(work_dir) if work_dir else None
        self.pipe = None
        self.layout: PipelineLayout | None = None
        self._name: str | None = None
        self._extra_info: dict[str, Any] = {}
        self._targets: dict[str, _Target] = {}
        self._img2img = None
        self.timings: dict[str, float] = {}
        self.cache: ModelCache | None = ModelCache(max_models=2) if cache is True else (cache or None)
        self.history_id: int | None = None  # the live merge's ID in the merge history
        self._interrupted = False
        self._progress = None
        self._pass = self._passes = 0

    # -- listing --------------------------------------------------------------------------------
    @staticmethod
    def _scan(folder: Path | None, exts=MODEL_EXTS) -> list[str]:
        if folder is None or not folder.is_dir():
            return []
        return sorted(str(p.relative_to(folder)).replace(os.sep, "/") for p in folder.rglob("*")
                      if p.suffix.lower() in exts and p.is_file())

    def list_checkpoints(self) -> list[str]:
        return self._scan(self.models_dir)

    def list_vaes(self) -> list[str]:
        return self._scan(self.vae_dir)

    def list_loras(self) -> list[str]:
        return self._scan(self.lora_dir)

    def lora_dirs(self) -> list[str]:
        return [str(self.lora_dir)] if self.lora_dir is not None else []

    def samplers(self) -> list[str]:
        return sampler_table.available()

    def checkpoint_path(self, name: str) -> str:
        path = Path(name)
        if not path.is_absolute() and self.models_dir is not None:
            path = self.models_dir / name
        if not path.is_file():
            raise ModelFileError(f"Checkpoint {name!r} was not found" +
                                 (f" in {str(self.models_dir)!r}." if self.models_dir else "."))
        return str(path)

    @property
    def model_name(self) -> str | None:
        return self._name

    def read_state_dict(self, name: str) -> Mapping:
        if self.cache is None:
            return super().read_state_dict(name)
        return self.cache.get(self.checkpoint_path(name))

    def _cached_models(self, recipe, models: Mapping | None) -> dict | None:
        """``models`` with the recipe's model files answered from the cache (when there is one)."""
        if self.cache is None:
            return models
        out = dict(models or {})
        for label, value in (("A", recipe.model_a), ("B", recipe.model_b), ("C", recipe.model_c)):
            if label not in out and value and Path(value).suffix.lower() in MODEL_EXTS and Path(value).is_file():
                out[label] = self.cache.source(value)
        return out

    def clear_cache(self) -> int:
        """"Clear cache": drop the cached checkpoints (not those an XY plot protects)."""
        return self.cache.clear() if self.cache is not None else 0

    # -- building and swapping ----------------------------------------------------------------------
    def _torch_dtype(self):
        import torch

        return getattr(torch, self.dtype_name)

    def _tokenizer(self, pad_token: str):
        from .clip_tokenizer import EOS, load_tokenizer

        base = self.work_dir or (paths.data_dir() / "diffusers")
        folder = base / ("clip_tokenizer" if pad_token == EOS else "clip_tokenizer_pad0")
        return load_tokenizer(folder, pad_token)

    def _fits(self, arch: str, shapes: Mapping[str, tuple]) -> bool:
        if self.pipe is None or self.layout is None or self.layout.arch != arch:
            return False
        return all(shapes.get(k) == t.ldm_shape for k, t in self._targets.items())

    def build(self, state_dict: Mapping, name: str = "model") -> None:
        """Create the pipeline for ``state_dict``'s architecture and sizes, holding its weights (copied)."""
        import torch
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        from .. import arch as archs
        from diffusers import AutoencoderKL, UNet2DConditionModel

        t0 = time.perf_counter()
        shapes = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
        arch = archs.detect(list(shapes), shapes, source=name).id
        layout = layout_for(arch, shapes)
        if "v_pred" in shapes:
            layout.prediction_type = "v_prediction"
        vocab = [te["config"]["vocab_size"] for te in layout.text_encoders]
        if min(vocab) < 49408:
            raise ArchitectureError(f"{name}: its text encoder has {min(vocab)} token embeddings; the CLIP "
                                    "tokenizer needs 49408.", "Use a complete SD checkpoint.")
        self.unload()
        try:
            from accelerate import init_empty_weights
        except ImportError:  # without accelerate the modules are initialised (randomly) first: slower
            import contextlib
            init_empty_weights = contextlib.nullcontext
        with init_empty_weights():
            unet = UNet2DConditionModel(**layout.unet)
            vae = AutoencoderKL(**layout.vae)
            encoders = []
            for te in layout.text_encoders:
                cfg = CLIPTextConfig(**te["config"])
                encoders.append(CLIPTextModelWithProjection(cfg) if te["kind"] == "open_clip_projection"
                                else CLIPTextModel(cfg))
        components = {"unet": (unet, None), "vae": (vae, None)}
        for i, (te, model) in enumerate(zip(layout.text_encoders, encoders)):
            components["text_encoder" if i == 0 else "text_encoder_2"] = (model, te)
        dtype = self._torch_dtype()
        targets: dict[str, _Target] = {}
        for cname, (model, spec) in components.items():
            table = _key_map(cname, model, shapes, spec)
            wanted = model.state_dict(keep_vars=True)
            fused: dict[str, torch.Tensor] = {}
            tensors = {}
            for dkey, (ldm, kind, index) in table.items():
                src = state_dict[ldm]
                want = wanted[dkey]
                to = dtype if want.is_floating_point() else want.dtype
                if kind == "qkv":
                    if ldm not in fused:
                        fused[ldm] = src.to(device=self.device, dtype=to, copy=True).contiguous()
                    n = fused[ldm].shape[0] // 3
                    tensors[dkey] = fused[ldm][index * n:(index + 1) * n]
                elif kind == "T":
                    tensors[dkey] = src.T.to(device=self.device, dtype=to, copy=True).contiguous()
                else:
                    tensors[dkey] = src.to(device=self.device, dtype=to, copy=True).reshape(want.shape)
            model.load_state_dict(tensors, strict=False, assign=True)
            params = model.state_dict(keep_vars=True)
            for dkey, (ldm, kind, _) in table.items():
                if kind == "qkv":
                    targets[ldm] = _Target(fused[ldm], "qkv", shapes[ldm])
                else:
                    targets[ldm] = _Target(params[dkey], kind, shapes[ldm])
            leftover = [k for k, p in model.named_parameters() if p.is_meta]
            if leftover:
                raise SuperMergerError(f"{cname}: parameters left unset after loading ({leftover[0]}, ...): a bug.")
            model.to(self.device).eval().requires_grad_(False)
            if spec is not None and not hasattr(model, "text_model"):
                # diffusers' SD1/SD2 clip_skip path still reads text_encoder.text_model.final_layer_norm,
                # which transformers ≥ 5.6 flattened away: a plain attribute (not a submodule) restores it
                object.__setattr__(model, "text_model", model)
        self.pipe = self._make_pipeline(layout, components)
        self.pipe.set_progress_bar_config(disable=True)
        self.layout, self._targets = layout, targets
        self._name = name
        self.timings["build"] = time.perf_counter() - t0

    def _make_pipeline(self, layout: PipelineLayout, components: dict):
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        from .clip_tokenizer import EOS

        scheduler = sampler_table.make_scheduler("Euler a", prediction_type=layout.prediction_type)
        unet, vae = components["unet"][0], components["vae"][0]
        if layout.arch == "sdxl":
            return StableDiffusionXLPipeline(
                vae=vae, text_encoder=components["text_encoder"][0], text_encoder_2=components["text_encoder_2"][0],
                tokenizer=self._tokenizer(EOS), tokenizer_2=self._tokenizer("!"), unet=unet, scheduler=scheduler,
                force_zeros_for_empty_prompt=False)  # the WebUI encodes an empty negative prompt like any other
        return StableDiffusionPipeline(vae=vae, text_encoder=components["text_encoder"][0],
                                       tokenizer=self._tokenizer(EOS), unet=unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def load_state_dict(self, state_dict: Mapping, name: str, *, recipe: Any = None,
                        infotext: Mapping[str, Any] | None = None) -> None:
        """Copy ``state_dict`` into the built pipeline (built first if there is none or it does not fit)."""
        import torch

        from .. import arch as archs

        shapes = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
        arch = archs.detect(list(shapes), shapes, source=name).id
        if not self._fits(arch, shapes):
            self.build(state_dict, name)
        else:
            t0 = time.perf_counter()
            with torch.no_grad():
                for ldm, target in self._targets.items():
                    src = state_dict[ldm]
                    if target.kind == "T":
                        target.tensor.copy_(src.T)
                    else:
                        target.tensor.copy_(src.reshape(target.tensor.shape))
            self.timings["swap"] = time.perf_counter() - t0
        self._after_swap(name, infotext)

    def _after_swap(self, name: str, infotext: Mapping[str, Any] | None, result=None, recipe=None) -> None:
        self._name = name
        self.history_id = getattr(result, "history_id", None)
        extra = {}
        if result is not None:
            from .mergeinfo import merge_fields

            extra = merge_fields(name, result, recipe)
        extra.update(infotext or {})
        self._extra_info = extra

    def live_state_dict(self, shapes: Mapping[str, tuple] | None = None) -> tuple[dict, list]:
        """(LDM key → tensor that writes into the pipeline, post-copies): the ``into`` target of a merge.

        Keys the pipeline has no place for (noise-schedule buffers, markers) and the transposed
        ``text_projection`` get scratch tensors; the post-copies move the latter into place."""
        import torch

        live, post = {}, []
        for ldm, target in self._targets.items():
            if target.kind == "T":
                scratch = torch.empty(target.ldm_shape, dtype=target.tensor.dtype, device=target.tensor.device)
                live[ldm] = scratch
                post.append((scratch, target.tensor))
            else:
                live[ldm] = target.tensor.view(target.ldm_shape)
        for key, shape in (shapes or {}).items():
            if key not in live:
                live[key] = torch.empty(shape)
        return live, post

    def merge_and_load(self, recipe, *, models: Mapping | None = None, name: str | None = None,
                       infotext: Mapping[str, Any] | None = None, **merge_kwargs):
        """Merge straight into the live pipeline's parameters when it fits the merge; else merge and build."""
        import torch

        from ..api import merge, plan_merge

        models = self._cached_models(recipe, models)
        plan = plan_merge(recipe, models)
        try:
            shapes = {t.key: tuple(t.shape) for t in plan.tasks}
            arch = plan.arch.id
        finally:
            for s in plan.sources.values():
                s.close()
        if not self._fits(arch, shapes):
            record = merge_kwargs.pop("history", True)
            result = merge(recipe, models=models, history="deferred" if record else False, **merge_kwargs)
            try:
                self.build(result.state_dict, name or result.name)
            finally:
                result.state_dict = None
            if record:
                result.record_history()  # only a merge that became the live pipeline is recorded
            self._after_swap(name or result.name, infotext, result)
            return result
        t0 = time.perf_counter()
        live, post = self.live_state_dict(shapes)
        try:
            result = merge(recipe, models=models, into=live, **merge_kwargs)
        except BaseException:
            # a stopped or failed merge leaves the weights partly overwritten: say so in every infotext
            self._name = f"{self._name} (partly overwritten by an interrupted merge)"
            self.history_id = None
            self._extra_info = {k: v for k, v in self._extra_info.items() if k not in ("Model", RECIPE_FIELD)}
            raise
        with torch.no_grad():
            for scratch, dest in post:
                dest.copy_(scratch.T)
        result.state_dict = None
        self.timings["merge_into"] = time.perf_counter() - t0
        self._after_swap(name or result.name, infotext, result)
        return result

    # -- generating ---------------------------------------------------------------------------
    def _img2img_pipeline(self):
        if self._img2img is None:
            from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline

            cls = StableDiffusionXLImg2ImgPipeline if self.layout.arch == "sdxl" else StableDiffusionImg2ImgPipeline
            parts = dict(self.pipe.components)
            if self.layout.arch == "sdxl":
                parts.pop("image_encoder", None), parts.pop("feature_extractor", None)
                self._img2img = cls(**parts, requires_aesthetics_score=False, force_zeros_for_empty_prompt=False)
            else:
                self._img2img = cls(**parts, requires_safety_checker=False)
            self._img2img.set_progress_bar_config(disable=True)
        return self._img2img

    def infotext(self, p: GenParams, seed: int) -> str:
        hr = p.enable_hr
        fields = {
            "Steps": p.steps, "Sampler": p.sampler,
            "Schedule type": p.scheduler if p.scheduler not in ("", "Automatic") else None,
            "CFG scale": p.cfg_scale, "Seed": seed, "Size": f"{p.width}x{p.height}",
            "Model": self._name, "Clip skip": p.clip_skip if p.clip_skip > 1 else None,
            "Denoising strength": p.denoising_strength if hr else None,
            "Hires upscale": p.hr_scale if hr else None,
            "Hires steps": p.hr_second_pass_steps if hr and p.hr_second_pass_steps else None,
            "Hires upscaler": p.hr_upscaler if hr else None,
        }
        fields.update(self._extra_info)
        return format_infotext(p.prompt, p.negative_prompt, fields)

    def interrupt(self) -> None:
        """Stop the running ``generate``: the current image ends at its next step, no further batch starts."""
        self._interrupted = True

    def _step_end(self, pipe, step, timestep, kwargs):
        if self._interrupted:
            pipe._interrupt = True  # diffusers skips the remaining steps and decodes what it has
        elif self._progress is not None:
            n = getattr(pipe, "_num_timesteps", 0) or 1
            self._progress(self._pass + (step + 1) / n, self._passes)
        return kwargs

    def generate(self, p: GenParams) -> Generated:
        import torch
        import torch.nn.functional as F

        if self.pipe is None:
            raise SuperMergerError("No model is loaded.", "Merge (or load) a model before generating.")
        if p.enable_hr and p.hr_upscaler not in ("Latent", "Latent (nearest)", "Latent (bilinear)"):
            raise SuperMergerError(f"Hires upscaler {p.hr_upscaler!r} is not available standalone.",
                                   "Use 'Latent' or 'Latent (nearest)'.")
        t0 = time.perf_counter()
        seed = p.seed if p.seed is not None and p.seed >= 0 else random.randrange(2 ** 32)
        out = Generated()
        self._interrupted = False
        # progress(done, total) in denoising passes, from GenParams.extra["progress"] (the UI's bar)
        self._progress = p.extra.get("progress")
        self._pass, self._passes = 0, max(1, p.batch_count) * (2 if p.enable_hr else 1)
        prompts = p.batch_prompts()
        size = len(prompts)
        for it in range(max(1, p.batch_count)):
            if self._interrupted:
                break
            seeds = [seed + it * size + k for k in range(size)]
            gens = [torch.Generator(self.device).manual_seed(s) for s in seeds]
            common = dict(prompt=prompts, negative_prompt=[p.negative_prompt] * size,
                          guidance_scale=p.cfg_scale, generator=gens, callback_on_step_end=self._step_end)
            if p.clip_skip > 1:
                common["clip_skip"] = p.clip_skip - 1  # WebUI "Clip skip 2" = diffusers clip_skip=1
            self.pipe.scheduler = sampler_table.make_scheduler(p.sampler, p.scheduler, self.layout.prediction_type)
            first = self.pipe(**common, num_inference_steps=p.steps, width=p.width, height=p.height,
                              output_type="latent" if p.enable_hr else "pil")
            images = first.images
            self._pass += 1
            if p.enable_hr:
                mode = "nearest" if "nearest" in p.hr_upscaler else "bilinear"
                latents = F.interpolate(images, scale_factor=p.hr_scale, mode=mode)
                second = self._img2img_pipeline()
                second.scheduler = sampler_table.make_scheduler(p.sampler, p.scheduler, self.layout.prediction_type)
                images = second(**common, image=latents, strength=p.denoising_strength,
                                num_inference_steps=p.hr_second_pass_steps or p.steps).images
                self._pass += 1
            out.images += images
            out.seeds += seeds
        # "Size" is the first pass's size, as in the WebUI; the hires fields tell the rest
        out.infotexts = [self.infotext(p.with_(prompt=prompts[i % size]), s) for i, s in enumerate(out.seeds)]
        out.seconds = time.perf_counter() - t0
        self.timings["generate"] = out.seconds
        return out

    def unload(self) -> None:
        self.pipe = None
        self._img2img = None
        self._targets = {}
        self.layout = None
        self._name = None
        self.history_id = None
        self._extra_info = {}
        gc.collect()
