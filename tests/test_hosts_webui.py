"""Contract tests of the WebUI and Forge adapters against a small test double of the WebUI API they call.

The double reproduces, in a few lines each, the behaviours recorded in spec/hosts.md Part 1 that the
adapters rely on: the checkpoint registry and aliases (§1.7), the reload check inside
``process_images()`` that silently loads a file over an unregistered model (§1.8), the hijack that
renames text-encoder keys, the class-level conditioning caches keyed by the checkpoint info and not
by the weights, and Forge's hash-based rebuild and LoRA backups (§1.12). It is not the WebUI: what
it cannot show is listed in the report of issue 5.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from supermerger.errors import SuperMergerError
from supermerger.hosts import GenParams

KEYS = {"unet": "model.diffusion_model.w", "te": "cond_stage_model.transformer.text_model.w",
        "vae": "first_stage_model.w"}


def weights(value: float) -> dict:
    return {KEYS["unet"]: torch.full((2, 2), value), KEYS["te"]: torch.full((3,), value),
            KEYS["vae"]: torch.full((2,), value), "betas": torch.ones(4)}


class TextEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.text_model = torch.nn.Module()
        self.text_model.w = torch.nn.Parameter(torch.zeros(3))


class Hijacked(torch.nn.Module):  # the WebUI wraps the text encoder: its keys gain a ".wrapped" level
    def __init__(self, inner):
        super().__init__()
        self.wrapped = inner


class LiveModel(torch.nn.Module):
    """An ldm model's key layout in miniature, with the attributes the WebUI sets on it."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.diffusion_model = torch.nn.Module()
        self.model.diffusion_model.w = torch.nn.Parameter(torch.zeros(2, 2))
        self.cond_stage_model = torch.nn.Module()
        self.cond_stage_model.transformer = TextEncoder()
        self.first_stage_model = torch.nn.Module()
        self.first_stage_model.w = torch.nn.Parameter(torch.zeros(2))
        self.register_buffer("betas", torch.ones(4))
        self.sd_checkpoint_info = None
        self.sd_model_hash = None
        self.sd_model_checkpoint = None


def build_webui(files: dict, forge: bool = False):
    """A fake ``modules`` package: {module name: module}. ``files``: {filename: state dict}."""
    mods = {n: types.ModuleType("modules." + n) for n in
            ("devices", "processing", "sd_hijack", "sd_models", "sd_vae", "shared", "cache")}
    devices, processing, sd_hijack, sd_models, sd_vae, shared, cache = (mods[n] for n in
        ("devices", "processing", "sd_hijack", "sd_models", "sd_vae", "shared", "cache"))
    log = []
    devices.torch_gc = lambda: log.append("torch_gc")

    # -- shared / cache
    class Opts:
        def __init__(self):
            self.data = {"sd_model_checkpoint": None, "CLIP_stop_at_last_layers": 1}

        def __getattr__(self, k):
            if k in self.data:
                return self.data[k]
            raise AttributeError(k)

    class State:
        def begin(self, job=""):
            log.append(("begin", job))

        def end(self):
            log.append("end")

    shared.opts, shared.state = Opts(), State()
    shared.cmd_opts = types.SimpleNamespace(lora_dir=None)
    caches: dict = {}
    cache.cache = lambda name: caches.setdefault(name, {})

    # -- sd_models: registry, select_checkpoint, reload check
    sd_models.checkpoints_list, sd_models.checkpoint_aliases, sd_models.checkpoints_loaded = {}, {}, {}

    class CheckpointInfo:
        def __init__(self, filename):
            self.filename = filename
            self.name = self.name_for_extra = self.model_name = filename.rsplit(".", 1)[0]
            self.sha256 = self.shorthash = None
            self.hash = "00000000"
            self.title = self.name
            self.ids = [self.name, filename]
            self.metadata = {}

        def register(self):
            sd_models.checkpoints_list[self.title] = self
            for i in self.ids:
                sd_models.checkpoint_aliases[i] = self

        def calculate_shorthash(self):  # §1.7: rewrites the title from `name`, re-registers
            entry = caches.get("hashes", {}).get(f"checkpoint/{self.name}")
            self.sha256 = entry["sha256"] if entry else "f" * 64
            self.shorthash = self.sha256[:10]
            self.title = f"{self.name} [{self.shorthash}]"
            self.ids += [self.shorthash, self.title]
            self.register()
            return self.shorthash

    for fn in files:
        info = CheckpointInfo(fn)
        info.calculate_shorthash()
    sd_models.CheckpointInfo = CheckpointInfo
    sd_models.model_data = types.SimpleNamespace(sd_model=None)

    def select_checkpoint():
        info = sd_models.checkpoint_aliases.get(shared.opts.sd_model_checkpoint)
        return info if info is not None else next(iter(sd_models.checkpoints_list.values()))

    def get_closet_checkpoint_match(s):
        if s in sd_models.checkpoint_aliases:
            return sd_models.checkpoint_aliases[s]
        found = sorted(t for t in sd_models.checkpoints_list if s in t)
        return sd_models.checkpoints_list[found[0]] if found else None

    def read_state_dict(filename, map_location=None):
        log.append(("read", filename))
        return {k: v.clone() for k, v in files[filename].items()}

    def load_model(checkpoint_info=None, already_loaded_state_dict=None):
        log.append(("load_model", checkpoint_info.title))
        m = LiveModel()
        m.load_state_dict(already_loaded_state_dict or read_state_dict(checkpoint_info.filename), strict=False)
        checkpoint_info.calculate_shorthash()
        m.sd_checkpoint_info, m.sd_model_hash = checkpoint_info, checkpoint_info.shorthash
        m.sd_model_checkpoint = checkpoint_info.filename
        sd_models.model_data.sd_model = m
        shared.opts.data["sd_model_checkpoint"] = checkpoint_info.title
        return m

    def reload_model_weights(sd_model=None, info=None, forced_reload=False):  # §1.8
        info = info or select_checkpoint()
        m = sd_model or sd_models.model_data.sd_model
        if m is not None and m.sd_model_checkpoint == info.filename and not forced_reload:
            return m
        log.append(("reload", info.filename))
        sd_hijack.model_hijack.undo_hijack(m)  # as the WebUI does around a reload
        m.load_state_dict(read_state_dict(info.filename), strict=False)
        sd_hijack.model_hijack.hijack(m)
        m.sd_checkpoint_info, m.sd_model_checkpoint = info, info.filename
        return m

    sd_models.select_checkpoint = select_checkpoint
    sd_models.get_closet_checkpoint_match = get_closet_checkpoint_match
    sd_models.read_state_dict = read_state_dict
    sd_models.load_model = load_model
    sd_models.reload_model_weights = reload_model_weights
    sd_models.unload_model_weights = lambda *a, **k: log.append("unload")

    # -- hijack: while hijacked, the text encoder's keys carry an extra ".wrapped" level
    def hijack(m):
        if not isinstance(m.cond_stage_model.transformer, Hijacked):
            m.cond_stage_model.transformer = Hijacked(m.cond_stage_model.transformer)

    def undo_hijack(m):
        if isinstance(m.cond_stage_model.transformer, Hijacked):
            m.cond_stage_model.transformer = m.cond_stage_model.transformer.wrapped

    sd_hijack.model_hijack = types.SimpleNamespace(hijack=hijack, undo_hijack=undo_hijack)

    # -- VAE
    sd_vae.vae_dict = {"good.vae.pt": "good.vae.pt"}
    sd_vae.load_vae_dict = lambda path, map_location=None: {"w": torch.full((2,), 9.0)}

    # -- processing: class-level caches keyed by the checkpoint info, not by the weights
    slots = 3 if forge else 2

    class StableDiffusionProcessing:
        cached_c = [None] * slots
        cached_uc = [None] * slots

        def __init__(self, **kw):
            self.__dict__.update(kw)
            self.extra_generation_params = {}
            self.scripts = None

        def close(self):
            log.append("close")

    class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
        cached_hr_c = [None] * slots
        cached_hr_uc = [None] * slots

    def process_images(p):
        if forge:
            sd_models.forge_model_reload()
        else:
            reload_model_weights()
        m = sd_models.model_data.sd_model
        key = (id(m.sd_checkpoint_info), p.prompt)
        cls = StableDiffusionProcessing
        if cls.cached_c[0] != key:  # the cond is the text encoder's weights, cached per info + prompt
            te = m.cond_stage_model.transformer
            te = te.wrapped if isinstance(te, Hijacked) else te
            cls.cached_c = [key, float(te.text_model.w.sum())] + [None] * (slots - 2)
        cond = cls.cached_c[1]
        unet = float(m.model.diffusion_model.w.sum())
        vae = float(m.first_stage_model.w.sum())
        extra = ", ".join(f"{k}: {v}" for k, v in p.extra_generation_params.items())
        info = f"{p.prompt}\nSteps: {p.steps}, Seed: {p.seed}, Model: {m.sd_checkpoint_info.name_for_extra}" + \
               (", " + extra if extra else "")
        return types.SimpleNamespace(images=[(cond, unet, vae)], infotexts=[info], all_seeds=[p.seed],
                                     index_of_first_image=0)

    processing.StableDiffusionProcessing = StableDiffusionProcessing
    processing.StableDiffusionProcessingTxt2Img = StableDiffusionProcessingTxt2Img
    processing.process_images = process_images
    return mods, log


@pytest.fixture
def fake_webui(monkeypatch):
    def install(files, forge=False):
        mods, log = build_webui(files, forge)
        package = types.ModuleType("modules")
        package.__path__ = []
        monkeypatch.setitem(sys.modules, "modules", package)
        for name, mod in mods.items():
            setattr(package, name, mod)
            monkeypatch.setitem(sys.modules, "modules." + name, mod)
        return mods, log
    return install


FILES = {"A.safetensors": weights(1.0), "B.safetensors": weights(2.0)}
P = GenParams(prompt="cat", seed=3, steps=2)


def test_webui_merge_survives_process_images_and_refreshes_conditioning(fake_webui):
    from supermerger.hosts.webui import WebUIHost

    mods, log = fake_webui(FILES)
    sd_models = mods["sd_models"]
    # the user loaded B (the second file); the first file in the list is A
    live = sd_models.load_model(sd_models.checkpoint_aliases["B"])
    host = WebUIHost()
    assert host.list_checkpoints()[:2] == [sd_models.checkpoint_aliases["A"].title,
                                           sd_models.checkpoint_aliases["B"].title]
    before = host.generate(P).images[0]
    assert before == (6.0, 8.0, 4.0)  # B's weights: te 3×2, unet 4×2, vae 2×2

    processing = mods["processing"]
    processing.StableDiffusionProcessing.cached_c = ["stale", 1.0]
    processing.StableDiffusionProcessingTxt2Img.cached_hr_uc = ["stale", 1.0]
    host.load_state_dict(weights(5.0), "A x 0.5 + B", recipe="recipe-json", base="B")
    assert processing.StableDiffusionProcessing.cached_c == [None, None]
    assert processing.StableDiffusionProcessingTxt2Img.cached_hr_uc == [None, None]
    assert sd_models.model_data.sd_model is live  # in place: same model object
    assert live.model.diffusion_model.w.flatten().tolist() == [5.0] * 4
    out = host.generate(P)
    assert out.images[0] == (15.0, 20.0, 10.0)  # merged weights, fresh conditioning, no reload
    assert not [e for e in log if isinstance(e, tuple) and e[0] == "reload"]
    assert out.infotexts[0].endswith("Model: A x 0.5 + B")
    info = live.sd_checkpoint_info
    # model B's file stands behind it, under a name of its own (no file has it), so that picking B reloads B
    assert info.filename.startswith("B.safetensors#") and info.title in sd_models.checkpoints_list
    assert live.sd_model_checkpoint == info.filename
    assert sd_models.checkpoint_aliases["B"].title.startswith("B [")  # model B's entry untouched
    info.calculate_shorthash()  # what load_model_weights would do: the merge's own entry, no hashing of B
    assert info.title == f"A x 0.5 + B [{info.sha256[:10]}]" and sd_models.checkpoint_aliases["B"].name == "B"
    assert isinstance(live.cond_stage_model.transformer, Hijacked)  # hijack restored


def test_webui_unregistered_model_would_be_reloaded(fake_webui):
    """The trap the registration avoids (§1.8): without it process_images() reads the first file over the merge."""
    mods, log = fake_webui(FILES)
    sd_models, shared = mods["sd_models"], mods["shared"]
    live = sd_models.load_model(sd_models.checkpoint_aliases["B"])
    live.load_state_dict(weights(5.0), strict=False)
    shared.opts.data["sd_model_checkpoint"] = "unregistered merge"
    mods["processing"].process_images(mods["processing"].StableDiffusionProcessingTxt2Img(prompt="x", steps=1, seed=1))
    assert ("reload", "A.safetensors") in log


def test_webui_vae_choice_cache_read_and_rebuild(fake_webui):
    from supermerger.hosts.webui import WebUIHost

    mods, log = fake_webui(FILES)
    sd_models = mods["sd_models"]
    host = WebUIHost()
    # no live model yet: the adapter rebuilds through load_model with the dict
    host.load_state_dict(weights(4.0), "m1", base="A")
    assert ("load_model", sd_models.model_data.sd_model.sd_checkpoint_info.title) in log
    assert host.generate(P).images[0] == (12.0, 16.0, 8.0)
    # a VAE the user chose is baked in; otherwise the merge's VAE stays
    host.load_state_dict(weights(4.0), "m2", vae="good.vae.pt")
    assert host.generate(P).images[0] == (12.0, 16.0, 18.0)
    with pytest.raises(SuperMergerError, match="no VAE"):
        host.load_state_dict(weights(4.0), "m3", vae="missing.pt")
    # read_state_dict: the WebUI's checkpoint cache first, then the file
    info_a = sd_models.checkpoint_aliases["A"]
    sd_models.checkpoints_loaded[info_a] = {"cached": torch.zeros(1)}
    assert list(host.read_state_dict("A")) == ["cached"]
    assert KEYS["unet"] in host.read_state_dict("B") and ("read", "B.safetensors") in log
    assert host.checkpoint_path("B") == "B.safetensors"
    with pytest.raises(SuperMergerError, match="no checkpoint"):
        host.read_state_dict("Z")
    host.unload()
    assert "unload" in log


def test_webui_generation_parameters_and_scripts(fake_webui):
    from supermerger.hosts.webui import WebUIHost

    mods, log = fake_webui(FILES)
    mods["sd_models"].load_model(mods["sd_models"].checkpoint_aliases["A"])
    host = WebUIHost()
    host.load_state_dict(weights(1.5), "merge", infotext={"SuperMerger ID": 4})
    runner = object()
    p = host.processing_object(GenParams(prompt="dog", negative_prompt="bad", seed=9, steps=3, cfg_scale=5,
                                         sampler="DPM++ 2M", scheduler="Karras", batch_size=2, batch_count=3,
                                         clip_skip=2, enable_hr=True, hr_scale=1.5, denoising_strength=0.4,
                                         extra={"scripts": runner, "script_args": (1, 2)}))
    assert (p.prompt, p.negative_prompt, p.seed, p.steps, p.cfg_scale, p.sampler_name, p.scheduler) == \
        ("dog", "bad", 9, 3, 5, "DPM++ 2M", "Karras")
    assert (p.batch_size, p.n_iter, p.enable_hr, p.hr_scale, p.denoising_strength) == (2, 3, True, 1.5, 0.4)
    assert p.override_settings == {"CLIP_stop_at_last_layers": 2}
    assert not p.do_not_save_samples and not p.do_not_save_grid  # saved where txt2img saves, as the WebUI says
    quiet = host.processing_object(GenParams(extra={"save_images": False}))
    assert quiet.do_not_save_samples and quiet.do_not_save_grid
    # one prompt per image (prompt3): the WebUI's list of batch size × n_iter prompts
    each = host.processing_object(GenParams(prompt="unused", prompts=("a", "b", "c"), batch_size=1, batch_count=2))
    assert (each.prompt, each.batch_size, each.n_iter) == (["a", "b", "c", "a", "b", "c"], 3, 2)
    assert p.scripts is runner and p.script_args == [1, 2]
    out = host.generate(P)
    assert out.infotexts[0].endswith("Model: merge, SuperMerger ID: 4")
    assert ("begin", "supermerger") in log and "end" in log and "close" in log


# -- Forge ---------------------------------------------------------------------------------------

class LoraLoader:
    def __init__(self):
        self.backup, self.loaded_hash = {}, str([])


class EmbeddingWrapper(torch.nn.Module):
    """Forge's CLIPEmbeddingForTextualInversion: the wrapped module under ``.wrapped``, its weight also
    re-exposed on the wrapper, so one tensor has two names in the state dict."""

    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped
        self.w = wrapped.w


@torch.inference_mode()  # Forge's forge_loader builds under inference mode: its parameters are inference tensors
def forge_model(state: dict):
    """Forge's model object in miniature: components under forge_objects, LDM names inside UNet/VAE,
    transformers names inside the text encoder, whose tensor Forge's wrapper holds under two names."""
    unet = torch.nn.Module()
    unet.w = torch.nn.Parameter(state[KEYS["unet"]].clone(), requires_grad=False)
    vae = torch.nn.Module()
    vae.w = torch.nn.Parameter(state[KEYS["vae"]].clone(), requires_grad=False)
    te = TextEncoder()
    te.text_model.w.data.copy_(state[KEYS["te"]])
    te.text_model = EmbeddingWrapper(te.text_model)
    unet_patcher = types.SimpleNamespace(model=types.SimpleNamespace(diffusion_model=unet), lora_loader=LoraLoader())
    clip = types.SimpleNamespace(cond_stage_model=types.SimpleNamespace(clip_l=types.SimpleNamespace(transformer=te)),
                                 patcher=types.SimpleNamespace(lora_loader=LoraLoader()))
    objs = types.SimpleNamespace(unet=unet_patcher, vae=types.SimpleNamespace(first_stage_model=vae), clip=clip)
    m = types.SimpleNamespace(forge_objects=objs, sd_checkpoint_info=None, sd_model_hash=None,
                              sd_model_checkpoint=None)
    # what the fake process_images reads
    m.model = types.SimpleNamespace(diffusion_model=unet)
    m.cond_stage_model = types.SimpleNamespace(transformer=te)
    m.first_stage_model = vae
    return m


def install_forge(mods, files, log):
    sd_models, shared = mods["sd_models"], mods["shared"]
    data = sd_models.model_data
    data.sd_model = types.SimpleNamespace(sd_checkpoint_info=None)  # FakeInitialModel: no forge_objects
    data.forge_loading_parameters, data.forge_hash = {}, ""

    def forge_model_reload():  # §1.12: rebuild only when the parameters changed
        if data.forge_hash == str(data.forge_loading_parameters):
            return data.sd_model
        info = data.forge_loading_parameters["checkpoint_info"]
        log.append(("forge_build", info.filename))
        data.sd_model = forge_model(files[info.filename])
        data.sd_model.sd_checkpoint_info, data.sd_model.sd_model_checkpoint = info, info.filename
        data.forge_hash = str(data.forge_loading_parameters)
        return data.sd_model

    sd_models.forge_model_reload = forge_model_reload
    data.forge_loading_parameters = {"checkpoint_info": sd_models.checkpoint_aliases["A"]}
    shared.opts.data["sd_model_checkpoint"] = sd_models.checkpoint_aliases["A"].title


def test_forge_builds_through_its_own_path_then_swaps_in_place(fake_webui):
    pytest.importorskip("diffusers")
    from supermerger.hosts.forge import ForgeHost, is_forge

    mods, log = fake_webui(FILES, forge=True)
    install_forge(mods, FILES, log)
    assert is_forge()
    sd_models = mods["sd_models"]
    host = ForgeHost()
    host.load_state_dict(weights(3.0), "AB merge", base="B")
    assert ("forge_build", "B.safetensors") in log  # FakeInitialModel: model B built by Forge first
    live = sd_models.model_data.sd_model
    out = host.generate(P)
    assert out.images[0] == (9.0, 12.0, 6.0) and out.infotexts[0].endswith("Model: AB merge")
    assert [e for e in log if isinstance(e, tuple) and e[0] == "forge_build"] == [("forge_build", "B.safetensors")]
    assert mods["processing"].StableDiffusionProcessing.cached_c[2:] == [None]  # three slots kept

    # LoRA backups of the previous weights are dropped, so they cannot be restored over the next merge
    loader = live.forge_objects.unet.lora_loader
    loader.backup = {"w": torch.zeros(2, 2)}
    loader.loaded_hash = "['some lora']"
    host.load_state_dict(weights(7.0), "second merge")
    assert sd_models.model_data.sd_model is live and loader.backup == {} and loader.loaded_hash is None
    assert live.forge_objects.clip.patcher.lora_loader.loaded_hash is None
    assert host.generate(P).images[0] == (21.0, 28.0, 14.0)
    assert len([e for e in log if isinstance(e, tuple) and e[0] == "forge_build"]) == 1

    with pytest.raises(SuperMergerError, match="lacks 1 weight of the live model .'first_stage_model.w'"):
        host.load_state_dict({k: v for k, v in weights(1.0).items() if k != KEYS["vae"]}, "broken")
    # all or nothing: a text encoder that does not fit leaves the UNet and the VAE as they were, too
    bad = {**weights(1.0), KEYS["te"]: torch.ones(4)}
    with pytest.raises(SuperMergerError, match="another shape .*text_model.w .4 in the merge, 3 live"):
        host.load_state_dict(bad, "broken")
    assert host.generate(P).images[0] == (21.0, 28.0, 14.0) and host.model_name == "second merge"


def test_webui_forgets_the_merge_when_the_user_loads_a_checkpoint(fake_webui):
    """Item 7/10 of the A1111 live findings: a model the host did not load replaces the merge (identity
    check, and the WebUI's on_model_loaded callback); only the live merge is listed; picking model A's own
    file reloads A from disk instead of keeping the merge under A's name."""
    from supermerger.hosts.webui import WebUIHost

    mods, log = fake_webui(FILES)
    sd_models, shared = mods["sd_models"], mods["shared"]
    sd_models.load_model(sd_models.checkpoint_aliases["A"])
    host = WebUIHost()
    host.load_state_dict(weights(5.0), "first", infotext={"Model": "first ID 1", "SuperMerger recipe": "{}"})
    first = sd_models.model_data.sd_model.sd_checkpoint_info
    host.load_state_dict(weights(6.0), "second", infotext={"Model": "second ID 2"})
    titles = list(sd_models.checkpoints_list)
    assert first.title not in titles and len([t for t in titles if t.startswith("second [")]) == 1
    assert host.model_name == "second" and host.generate(P).infotexts[0].endswith("Model: second ID 2")
    # the user picks model A's file: the WebUI loads it (the stand-in file name differs from A's)
    a = sd_models.checkpoint_aliases["A"]
    shared.opts.data["sd_model_checkpoint"] = a.title
    out = host.generate(P)
    assert ("reload", "A.safetensors") in log and out.images[0] == (3.0, 4.0, 2.0)
    assert host.model_name is None and "ID" not in out.infotexts[0] and out.infotexts[0].endswith("Model: A")
    assert not [t for t in sd_models.checkpoints_list if t.startswith("second")]
    assert host.live_checkpoint() == a.title
    # the callback: a load the host did not make forgets the merge; its own loads do not
    host.load_state_dict(weights(7.0), "third")
    host.model_loaded(sd_models.model_data.sd_model)
    assert host.model_name is None
    with pytest.raises(SuperMergerError, match="live merge"):
        host.load_state_dict(weights(7.0), "fourth")
        host.checkpoint_path("fourth")
