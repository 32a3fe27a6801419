"""The model cache (capacity, LRU, protection, clear), merge IDs in images, and memory over many merge → gen cycles."""

from __future__ import annotations

import gc
import os

import pytest
import torch

from supermerger import Recipe
from supermerger.hosts.cache import ModelCache, state_dict_bytes
from supermerger.testing.synthetic import write_checkpoint


def _sd(n: int, value: float = 0.0) -> dict:
    return {"w": torch.full((n,), value), "b": torch.zeros(2)}


def test_lru_by_count_and_bytes():
    cache = ModelCache(max_models=2)
    cache.put("a", _sd(10)), cache.put("b", _sd(10))
    assert cache.get("a")["w"].shape == (10,)  # a is now the most recent
    cache.put("c", _sd(10))
    assert cache.names() == ["a", "c"] and "b" not in cache
    cache.set_capacity(max_models=None, max_bytes=state_dict_bytes(_sd(10)) * 2)
    cache.put("d", _sd(10))
    assert cache.names() == ["c", "d"]
    cache.put("huge", _sd(1000))  # larger than the whole capacity: not kept, nothing evicted for it
    assert cache.names() == ["c", "d"]
    assert ModelCache(max_models=0).get("x", loader=lambda p: _sd(3))["w"].shape == (3,)


def test_shared_storage_counted_once():
    t = torch.zeros(100)
    assert state_dict_bytes({"a": t, "b": t[:10], "c": t.view(10, 10)}) == 400


def test_files_read_once_and_again_when_changed(tmp_path):
    path = tmp_path / "m.safetensors"
    write_checkpoint(path, "sd1", seed=1)
    cache = ModelCache(max_models=1)
    first = cache.get(str(path))
    assert cache.get(path) is first and (cache.hits, cache.misses) == (1, 1)
    src = cache.source(str(path))
    assert src.path == path.resolve() and src.tensor(next(iter(first))) is first[next(iter(first))]
    write_checkpoint(path, "sd1", seed=2)
    os.utime(path, ns=(1, 1))  # a different mtime even on coarse clocks
    assert cache.get(path) is not first and cache.misses == 2
    with pytest.raises(Exception, match="neither a file nor in the model cache"):
        cache.get(tmp_path / "missing.safetensors")


def test_protect_keeps_models_an_xy_plot_holds_constant():
    cache = ModelCache(max_models=1)
    cache.put("a", _sd(4))
    with cache.protect(["a"]):
        with cache.protect(["a"]):  # nesting is counted
            cache.put("b", _sd(4))
        assert cache.is_protected("a")
        cache.put("c", _sd(4))
        assert "a" in cache and cache.names()[-1] == "c"
        assert cache.clear() == 1 and cache.names() == ["a"]  # "Clear cache" keeps what is protected
    assert not cache.is_protected("a")
    cache.put("d", _sd(4))
    assert cache.names() == ["d"]
    assert cache.clear(protected=True) == 1 and len(cache) == 0


# -- with the standalone host -----------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from supermerger.hosts import clip_tokenizer

    try:
        clip_tokenizer.find_bpe_file()
    except Exception:  # pragma: no cover
        pytest.skip("open-clip-torch (the CLIP vocabulary) is not installed")
    root = tmp_path_factory.mktemp("cache_models")
    return [str(write_checkpoint(root / f"{x}.safetensors", "sd1", seed=s, vocab=49408)) for x, s in (("A", 1), ("B", 2))]


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache_work")


def test_merge_ids_and_recipe_in_png(demo_files, work_dir, tmp_path):
    from supermerger import history
    from supermerger.hosts import GenParams
    from supermerger.hosts.diffusers_host import DiffusersHost
    from supermerger.hosts.infotext import parse_infotext
    from supermerger.hosts.mergeinfo import RECIPE_FIELD, draw_id, save_png

    a, b = demo_files
    host = DiffusersHost(work_dir=work_dir)
    ids = []
    for alpha in (0.3, 0.7):
        result = host.merge_and_load(Recipe(model_a=a, model_b=b, alpha=alpha))
        assert result.history_id is not None and host.history_id == result.history_id
        ids.append(result.history_id)
        gen = host.generate(GenParams(prompt="cat", seed=3, steps=1, width=64, height=64))
        fields = parse_infotext(gen.infotexts[0])[2]
        assert fields["Model"] == f"{result.name.replace(',', ' ')} ID {result.history_id}"
        recipe = Recipe.from_json(fields[RECIPE_FIELD])
        assert recipe.alpha == alpha and recipe.model_a == "A.safetensors" and "/" not in fields[RECIPE_FIELD]
        png = save_png(draw_id(gen.images[0], result.history_id), tmp_path / f"{alpha}.png", gen.infotexts[0])
        assert history.ids_from_png(png) == [result.history_id]
        assert history.png_text_chunks(png)["parameters"] == gen.infotexts[0]
    assert ids[1] == ids[0] + 1
    assert history.ids_from_png(sorted(tmp_path.glob("*.png"))) == ids
    # both files were read once: the cache answered the second merge
    assert host.cache.misses == 2 and host.cache.hits >= 2 and len(host.cache) == 2
    assert host.read_state_dict(a) is host.cache.get(a)
    assert host.clear_cache() == 2 and len(host.cache) == 0


def test_drawn_id_is_dark_text_top_left():
    from PIL import Image

    from supermerger.hosts.mergeinfo import draw_id

    img = Image.new("RGB", (64, 64), (128, 128, 128))
    out = draw_id(img, 42)
    corner = out.crop((0, 0, 30, 14)).convert("L")
    assert min(corner.getdata()) < 40 and max(corner.getdata()) > 200  # black text on its white box
    assert out.getpixel((60, 60)) == (128, 128, 128) and img.getpixel((2, 2)) == (128, 128, 128)


def test_rss_flat_over_30_merge_gen_cycles(demo_files, work_dir):
    from supermerger.hosts import GenParams
    from supermerger.hosts.diffusers_host import DiffusersHost

    a, b = demo_files
    host = DiffusersHost(work_dir=work_dir, cache=ModelCache(max_models=2))
    params = GenParams(prompt="a cat", seed=1, steps=1, width=64, height=64, sampler="Euler")
    rss = []
    for i in range(32):
        host.merge_and_load(Recipe(model_a=a, model_b=b, alpha=(i % 7) / 7), history=False)
        host.generate(params)
        gc.collect()
        rss.append(_rss())
    warm = rss[2:]  # two warm-up cycles: the pipeline, the caches and the allocator's pools fill up
    growth = (max(warm) - warm[0]) / warm[0]
    print(f"RSS over 30 cycles: first {warm[0] / 2**20:.1f} MiB, max {max(warm) / 2**20:.1f} MiB, "
          f"last {warm[-1] / 2**20:.1f} MiB ({growth:+.2%})")
    assert growth < 0.03, [round(r / 2**20, 1) for r in rss]
    host.unload()
    assert host.pipe is None and host.model_name is None
