"""A merge is recorded in the history only once it is the host's live model (issue 20, item 4): a load
that fails leaves no record and no ID; one that succeeds is recorded and its images carry the ID."""

from __future__ import annotations

import pytest
import torch

from supermerger import Recipe
from supermerger.errors import LiveModelError
from supermerger.history import History, model_field_with_id
from supermerger.hosts.base import Generated, Host


class RecordingHost(Host):
    """A host whose live model is a dict; ``refuse`` makes every load fail before writing."""

    def __init__(self, refuse: bool = False):
        self.refuse = refuse
        self.live: dict = {}
        self.fields: dict = {}
        self._name = None

    def list_checkpoints(self):
        return []

    def checkpoint_path(self, name):
        return name

    def load_state_dict(self, state_dict, name, *, recipe=None, infotext=None):
        if self.refuse:
            raise LiveModelError("The live model refuses this merge.")
        self.live = {k: v.clone() for k, v in state_dict.items()}
        self._name = name
        self.fields = dict(infotext or {})

    def set_merge_fields(self, fields):
        self.fields = dict(fields)

    @property
    def model_name(self):
        return self._name

    def generate(self, params):
        return Generated()

    def unload(self):
        self.live = {}


def recipe(models):
    return Recipe(model_a=str(models[("sd1", "A")]), model_b=str(models[("sd1", "B")]), alpha=0.5)


def test_failed_load_is_not_recorded(models):
    host = RecordingHost(refuse=True)
    with pytest.raises(LiveModelError):
        host.merge_and_load(recipe(models), history=True)
    assert History().count() == 0
    assert host.model_name is None and host.live == {}


def test_loaded_merge_is_recorded_and_its_images_carry_the_id(models):
    host = RecordingHost()
    before = History().count()
    result = host.merge_and_load(recipe(models), history=True)
    hist = History()
    assert hist.count() == before + 1
    assert result.history_id == hist.last_id() is not None
    assert host.fields["Model"] == model_field_with_id(result.name, result.history_id)
    # the live tensors are the merge: (1 - 0.5) A + 0.5 B, in float32, rounded once to fp16
    from safetensors.torch import load_file

    a, b = load_file(str(models[("sd1", "A")])), load_file(str(models[("sd1", "B")]))
    key = "model.diffusion_model.input_blocks.0.0.weight"
    expect = (a[key].float() * 0.5 + b[key].float() * 0.5).half()
    assert torch.equal(host.live[key], expect)
    # a second record_history() records nothing more
    assert result.record_history() == result.history_id
    assert History().count() == before + 1


def test_no_history_records_nothing(models):
    host = RecordingHost()
    result = host.merge_and_load(recipe(models), history=False)
    assert result.history_id is None and History().count() == 0
    assert "ID" not in host.fields["Model"]
