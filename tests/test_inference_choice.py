"""siglip.inference_choice: the packed copy or the module, whichever was timed faster on this CPU,
cached per CPU model, tower and dtype; SIGLIP_PACKED=0/1 forces either; small towers are not timed."""

from __future__ import annotations

import json

import pytest
import torch

from siglip import inference, inference_choice
from siglip.config import ModelConfig
from siglip.model import SigLIP

pytestmark = pytest.mark.skipif(
    inference.compute_dtype(torch.nn.Linear(2, 2).eval()) is None, reason="no oneDNN in this torch build"
)


@pytest.fixture
def timed(monkeypatch, tmp_path):
    """Every tower timed (no size floor), a fresh cache in tmp_path, nothing chosen yet in this
    process; `timed.times` = (module s, packed s) that the fake timer reports, `timed.calls` counts."""
    monkeypatch.setenv("SIGLIP_CACHE", str(tmp_path))
    monkeypatch.delenv("SIGLIP_PACKED", raising=False)
    monkeypatch.setattr(inference_choice, "MIN_PARAMS", 0)
    monkeypatch.setattr(inference_choice, "_CHOSEN", {})

    class Fake:
        times, calls = (1.0, 1.0), 0

    def fake_time_paths(module, packed, calls=2):
        module(), packed()  # both paths really run on the rows given
        Fake.calls += 1
        return Fake.times

    monkeypatch.setattr(inference_choice, "time_paths", fake_time_paths)
    return Fake


@pytest.fixture
def model() -> SigLIP:
    torch.manual_seed(0)
    return SigLIP(ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=64)).eval()


def inputs(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, torch.randint(0, 64, (n, 8), generator=g)


def cache() -> dict:
    return json.loads(inference_choice.cache_file().read_text())


@torch.inference_mode()
def test_the_slower_path_is_not_chosen(timed, model):
    pixels, ids = inputs()
    timed.times = (0.5, 1.0)  # the module twice as fast (as fp32 on an AVX2-only CPU)
    got = inference.encode_image(model, pixels)
    assert model.image not in inference._PACKED  # the module ran, no packed copy is kept
    torch.testing.assert_close(got, model.encode_image(pixels), rtol=0, atol=0)  # bit for bit: the module
    timed.times = (1.0, 0.5)  # the packed copy twice as fast
    inference.encode_text(model, ids)
    assert model.text in inference._PACKED
    assert timed.calls == 2
    inference.encode_image(model, pixels), inference.encode_text(model, ids)
    assert timed.calls == 2  # timed once per tower and dtype, then kept
    entries = cache()
    assert len(entries) == 2
    for key, entry in entries.items():
        cpu, tower, dtype, _ = key.split(" | ")
        assert cpu == inference_choice.cpu_name() and dtype == "float32"
        assert entry["packed"] is (tower.startswith("TextTower")), key
        assert entry["packed_s"] == (1.0 if tower.startswith("ImageTower") else 0.5)


@torch.inference_mode()
def test_cached_per_cpu_model_and_dtype(timed, model, monkeypatch):
    pixels, _ = inputs()
    timed.times = (0.5, 1.0)
    inference.encode_image(model, pixels)
    monkeypatch.setattr(inference_choice, "_CHOSEN", {})  # a later process on the same CPU: read from the file
    assert inference_choice.decided(model.image, torch.float32) is False
    assert inference.packed_tower(model.image, (pixels,)) is model.image
    assert timed.calls == 1
    assert inference_choice.decided(model.image, torch.bfloat16) is None  # another dtype: not known yet
    here = inference_choice.cpu_name()
    monkeypatch.setattr(inference_choice, "cpu_name", lambda: "Another CPU x2 threads")
    assert inference_choice.decided(model.image, torch.float32) is None  # another CPU model: timed again
    timed.times = (1.0, 0.5)
    assert inference.packed_tower(model.image, (pixels,)) is not model.image
    assert timed.calls == 2
    cpus = {key.split(" | ")[0]: entry["packed"] for key, entry in cache().items()}
    assert cpus == {here: False, "Another CPU x2 threads": True}


@torch.inference_mode()
def test_siglip_packed_forces_either_without_timing(timed, model, monkeypatch):
    pixels, _ = inputs()
    timed.times = (0.5, 1.0)  # the module faster; forced anyway
    monkeypatch.setenv("SIGLIP_PACKED", "1")
    assert inference.packed_tower(model.image, (pixels,)) is not model.image
    monkeypatch.setenv("SIGLIP_PACKED", "0")
    assert inference.packed_tower(model.image, (pixels,)) is model.image
    assert timed.calls == 0 and not inference_choice.cache_file().exists()


@torch.inference_mode()
def test_small_towers_are_not_timed(timed, model, monkeypatch):
    monkeypatch.setattr(inference_choice, "MIN_PARAMS", 5_000_000)
    assert inference.packed_tower(model.image, inputs()[:1]) is not model.image
    assert timed.calls == 0


@torch.inference_mode()
def test_real_timing_writes_both_times(model, monkeypatch, tmp_path):
    """The real timer on a tiny tower: both paths timed on the first ROWS rows, the faster kept."""
    monkeypatch.setenv("SIGLIP_CACHE", str(tmp_path))
    monkeypatch.delenv("SIGLIP_PACKED", raising=False)
    monkeypatch.setattr(inference_choice, "MIN_PARAMS", 0)
    monkeypatch.setattr(inference_choice, "_CHOSEN", {})
    inference.encode_text(model, inputs(5)[1])
    (entry,) = cache().values()
    assert entry["packed_s"] > 0 and entry["module_s"] > 0
    assert entry["packed"] is (entry["packed_s"] < entry["module_s"])
    assert (model.text in inference._PACKED) is entry["packed"]
