"""What every tab shares: the host, a registry of named components, the Stop flag, and the Merge
tab's inputs and outputs bound to ``forms`` (values <-> Recipe / GenParams).

Tabs register components under ``ctx.components["<tab>.<name>"]``. The Merge tab fills
``merge_inputs`` (in ``forms.MERGE_FIELDS`` order), ``gen_inputs`` (``forms.GEN_FIELDS`` order) and
the outputs ``gallery``, ``infotext`` and ``status``; other tabs use them to restore a recipe into
the Merge tab (``apply_recipe``) or to run merges with the user's current settings.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Callable

from ..hosts.base import GenParams, Host
from ..merge.recipe import Recipe
from . import forms


class UIContext:
    def __init__(self, host: Host, *, gen_defaults: GenParams | None = None, device: str = "cpu",
                 output_dir: str | os.PathLike | None = None, demo: bool = False,
                 images_dir: str | os.PathLike | None = None,
                 gen_defaults_fn: Callable[[], GenParams] | None = None,
                 samplers_fn: Callable[[], list[str]] | None = None,
                 vae_path_fn: Callable[[str], str] | None = None,
                 grids_dir_fn: Callable[[], str | os.PathLike] | None = None):
        self.host = host
        self.device = device
        self.output_dir = Path(output_dir) if output_dir else None
        # where generated images are written (standalone); None where the host saves them (the WebUI)
        self.images_dir = Path(images_dir) if images_dir else None
        self.demo = demo  # the standalone app offers the built-in demo models
        self._gen_defaults = gen_defaults or GenParams()
        self._gen_defaults_fn = gen_defaults_fn
        self._samplers_fn = samplers_fn
        self._vae_path_fn = vae_path_fn
        self._grids_dir_fn = grids_dir_fn  # where XYZ grids go (the WebUI's txt2img-grids); None: data folder
        self.components: dict[str, Any] = {}
        self.stop = threading.Event()
        self.stop_hooks: list[Callable[[], None]] = []  # also run by Stop (e.g. the WebUI's interrupt)
        self.lock = threading.Lock()  # one merge or generation at a time: they share the live model
        self.merge_inputs: list = []
        self.gen_inputs: list = []
        self.gallery = None
        self.infotext = None
        self.status = None
        self.last_result = None  # api.MergeResult of the live merge
        self.last_recipe: Recipe | None = None  # as merged (with the seed actually drawn)
        self.last_infotexts: list[str] = []  # of the images in the gallery

    def live_model_replaced(self) -> None:
        """Another tab (the XYZ plot, a reservation, a LoRA loaded into the model) replaced the live model:
        it is no longer the Merge tab's last merge, so neither its ID nor its recipe (for "Save current
        merge") may be shown or used for it."""
        self.last_result = None
        self.last_recipe = None

    def merge_is_live(self) -> bool:
        """Whether the Merge tab's last merge is still the host's live model (the host says when the user
        loaded another model behind its back; then the merge is forgotten here too)."""
        if self.last_result is not None and not self.host.model_name:
            self.live_model_replaced()
        return self.last_result is not None

    def grids_dir(self) -> Path | None:
        """Where the XYZ plot writes its grids: the host's image folder where it has one."""
        if self._grids_dir_fn is None:
            return None
        try:
            folder = self._grids_dir_fn()
        except Exception:  # noqa: BLE001 - the WebUI's settings are not readable: the data folder
            return None
        return Path(folder) if folder else None

    # -- registering -------------------------------------------------------------------------
    def register(self, name: str, component):
        """Put ``component`` in the registry under ``name`` ("<tab>.<name>") and return it."""
        if name in self.components:
            raise ValueError(f"UI component name {name!r} registered twice")
        self.components[name] = component
        return component

    @property
    def gen_defaults(self) -> GenParams:
        """The generation defaults: the WebUI's txt2img values inside the WebUI, else GenParams()."""
        if self._gen_defaults_fn is not None:
            try:
                return self._gen_defaults_fn()
            except Exception:  # noqa: BLE001 - the WebUI's UI is not built yet: plain defaults
                return self._gen_defaults
        return self._gen_defaults

    def samplers(self) -> list[str]:
        """Sampler names for the Gen section (the host's, or those ``samplers_fn`` gives)."""
        try:
            return list(self._samplers_fn() if self._samplers_fn is not None else self.host.samplers())
        except Exception:  # noqa: BLE001 - no list: the section offers the default sampler only
            return []

    # -- model names <-> files -----------------------------------------------------------------
    def model_path(self, name: str) -> str:
        """A picker's checkpoint name as a file path (the host's; an existing path stays as it is)."""
        if os.path.isabs(name) and os.path.isfile(name):
            return name
        return self.host.checkpoint_path(name)

    def model_name(self, path: str) -> str:
        """The picker's name of a checkpoint file (the recipe's path when the host lists it), else the
        file name as recorded."""
        names = self.host.list_checkpoints()
        if path in names:
            return path
        target = os.path.normcase(os.path.abspath(path))
        for name in names:
            try:
                if os.path.normcase(os.path.abspath(self.host.checkpoint_path(name))) == target:
                    return name
            except Exception:  # noqa: BLE001 - a listed model that vanished
                continue
        base = Path(path).name
        for name in names:
            if Path(name.split(" [")[0]).name in (base, Path(base).stem):
                return name
        return path

    def vae_path(self, name: str) -> str:
        """A VAE picker's name as a file path: ``vae_path_fn`` (the WebUI's VAE list), else the host's VAE
        folder (standalone), else the name as a path."""
        if os.path.isabs(name) and os.path.isfile(name):
            return name
        if self._vae_path_fn is not None:
            return self._vae_path_fn(name)
        folder = getattr(self.host, "vae_dir", None)
        if folder is not None and (Path(folder) / name).is_file():
            return str(Path(folder) / name)
        from ..errors import ModelFileError

        raise ModelFileError(f"VAE {name!r} was not found" + (f" in {str(folder)!r}." if folder else "."),
                             "Refresh the VAE list, or pick None.")

    def vae_name(self, path: str) -> str:
        """The VAE picker's name of a file (the recipe's path), matched by file name."""
        try:
            names = self.host.list_vaes()
        except Exception:  # noqa: BLE001
            names = []
        if path in names:
            return path
        base = Path(path).name
        for name in names:
            if Path(name).name == base:
                return name
        return path

    # -- Merge tab values ------------------------------------------------------------------------
    def merge_values(self, values) -> dict[str, Any]:
        return dict(zip(forms.MERGE_FIELDS, values))

    def recipe_from_ui(self, *values) -> Recipe:
        """The Recipe for the Merge tab's values (``merge_inputs`` order)."""
        return forms.recipe_from_values(self.merge_values(values), self.model_path, self.device, self.vae_path)

    def params_from_ui(self, *values) -> GenParams:
        return forms.gen_params_from_values(dict(zip(forms.GEN_FIELDS, values)), self.gen_defaults)

    def apply_recipe(self, recipe: Recipe) -> list:
        """Updates that fill the Merge tab from ``recipe``, in ``merge_inputs`` order."""
        from .compat import update

        values = forms.values_from_recipe(recipe, self.model_name, self.vae_name)
        return [update(value=values[name]) if name in values else update() for name in forms.MERGE_FIELDS]

    def request_stop(self) -> None:
        """Stop: a running merge stops at its next tensor; hosts stop generating where they can."""
        self.stop.set()
        self.host.interrupt()
        for hook in self.stop_hooks:
            hook()

    def message(self, exc: BaseException) -> str:
        return forms.message(exc)
