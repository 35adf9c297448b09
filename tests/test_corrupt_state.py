"""Corrupt state: truncated and bit-flipped checkpoints, other versions, non-finite weights; keeping
the last N checkpoints and resuming from the newest good one."""

from __future__ import annotations

import logging
import os
import zlib

import pytest
import torch

import siglip
from siglip.checkpoint import (
    LATEST,
    digest_path,
    publish_checkpoint,
    read_checkpoint,
    read_resumable,
    save_model,
    save_train_state,
    step_checkpoint_path,
    step_checkpoints,
)
from siglip.interop.tensors import read_tensors
from siglip.model import SigLIP
from siglip.zipcheck import check_zip_crcs, load_checked


@pytest.fixture
def run_dir(tmp_path, tiny_config, tokenizer):
    """Checkpoints at steps 2, 4, 6 written as training writes them, keeping the last 2."""
    torch.manual_seed(0)
    model = SigLIP(tiny_config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    for step in (2, 4, 6):
        with torch.no_grad():
            model.b.fill_(-float(step))
        save_train_state(step_checkpoint_path(tmp_path, step), model, tokenizer, "bicubic", opt, sched, step, {})
        publish_checkpoint(tmp_path, step, keep=2)
    return tmp_path


def flip_bit(path):
    """Flip one bit inside the largest tensor's bytes (torch.load alone does not notice)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))


def test_keeps_the_last_n_and_links_the_newest(run_dir):
    assert [p.name for p in step_checkpoints(run_dir)] == ["checkpoint-00000006.pt", "checkpoint-00000004.pt"]
    assert os.path.samefile(run_dir / LATEST, step_checkpoint_path(run_dir, 6))  # a link, not a copy
    line = digest_path(run_dir / LATEST).read_text()
    assert line.endswith("  checkpoint.pt\n") and len(line.split()[0]) == 64  # `sha256sum -c` format
    assert read_checkpoint(run_dir / LATEST)["step"] == 6
    assert not list(run_dir.glob(".*.tmp"))


def test_bit_flip_is_detected_by_the_digest_and_resume_falls_back(run_dir, caplog):
    newest = step_checkpoint_path(run_dir, 6)
    flip_bit(newest)
    assert torch.load(newest, weights_only=True)["step"] == 6  # loads without complaint: hence the digest
    with pytest.raises(ValueError, match=r"checkpoint-00000006\.pt: corrupt: sha256 .* does not match"):
        read_checkpoint(newest)
    with caplog.at_level(logging.WARNING):
        payload, path = read_resumable(run_dir)
    assert path == step_checkpoint_path(run_dir, 4) and payload["step"] == 4
    assert payload["state_dict"]["b"].item() == -4.0
    assert "checkpoint.pt: corrupt" in caplog.text and "resuming from" in caplog.text


def test_truncated_checkpoint_is_named_with_or_without_a_digest(run_dir):
    latest = run_dir / LATEST
    data = latest.read_bytes()
    os.unlink(latest)  # a fresh inode, so checkpoint-6 stays good
    latest.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"checkpoint\.pt: corrupt"):
        read_checkpoint(latest)
    digest_path(latest).unlink()
    with pytest.raises(ValueError, match=r"checkpoint\.pt: corrupt: the zip container is damaged or truncated"):
        read_checkpoint(latest)
    payload, path = read_resumable(run_dir)
    assert path == step_checkpoint_path(run_dir, 6) and payload["step"] == 6


def test_bit_flip_without_a_sidecar_is_named_by_the_zip_crc(tmp_path, tiny_config, tokenizer):
    """A model file copied without its .sha256: the zip's CRC-32s still name a flipped bit, for our
    files and for foreign torch files (a bare state dict, as open_clip and HF .bin files are)."""
    model = SigLIP(tiny_config)
    save_model(tmp_path / "m.pt", model, tokenizer)
    digest_path(tmp_path / "m.pt").unlink()
    assert check_zip_crcs(tmp_path / "m.pt")
    intact = siglip.load(tmp_path / "m.pt")  # an intact file loads
    assert torch.equal(intact.model.b, model.b)
    flip_bit(tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["format"] == "siglip"  # torch.load does not notice
    for load in (read_checkpoint, siglip.load):
        with pytest.raises(
            ValueError, match=r"m\.pt: corrupt: record '[^']+/data/\d+' has CRC-32 [0-9a-f]{8} but the file"
        ):
            load(tmp_path / "m.pt")
    theirs = tmp_path / "open_clip_pytorch_model.bin"
    torch.save({"visual.trunk.pos_embed": torch.randn(1, 4, 8)}, theirs)
    flip_bit(theirs)
    with pytest.raises(ValueError, match=r"open_clip_pytorch_model\.bin: corrupt: record"):
        siglip.load(theirs)
    with pytest.raises(ValueError, match=r"open_clip_pytorch_model\.bin: corrupt: record"):
        read_tensors(theirs)


def test_zip_crc_check_unit(tmp_path):
    """Every record is checked (the small pickle too), legacy non-zip torch files are passed over."""
    path = tmp_path / "x.pt"
    torch.save({"a": torch.arange(100_000, dtype=torch.float32), "b": torch.ones(3)}, path)
    assert check_zip_crcs(path) and check_zip_crcs(path, crc32=zlib.crc32)
    assert torch.equal(load_checked(path)["a"], torch.arange(100_000, dtype=torch.float32))
    data = bytearray(path.read_bytes())
    good = bytes(data)
    at = data.index(b"collections")  # inside data.pkl: the pickle, not a tensor
    data[at] ^= 0x20
    path.write_bytes(bytes(data))
    for crc32 in (None, zlib.crc32):  # ISA-L's where installed (siglip[fastcrc]), and zlib's
        for check in (check_zip_crcs, load_checked):
            with pytest.raises(ValueError, match=r"x\.pt: corrupt: record '[^']+/data\.pkl'"):
                check(path, crc32=crc32)
    path.write_bytes(good[:-10])  # the end of the central directory cut off
    with pytest.raises(ValueError, match=r"x\.pt: corrupt: the zip container is damaged or truncated"):
        check_zip_crcs(path)
    torch.save({"a": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert check_zip_crcs(path) is False and torch.equal(load_checked(path)["a"], torch.ones(3))


def test_a_flip_in_a_large_record_is_named(tmp_path):
    """A 12 MB tensor (checked in 64 MiB pieces on threads, largest first) with a bit flipped in its
    middle: named, with zlib's CRC and with ISA-L's where installed."""
    path = tmp_path / "big.pt"
    big = torch.randn(3_000_000)
    torch.save({"small": torch.ones(3), "big": big}, path)
    assert torch.equal(load_checked(path)["big"], big)
    flip_bit(path)  # the largest record: the 12 MB tensor, storage 1
    for crc32 in (None, zlib.crc32):
        with pytest.raises(ValueError, match=r"big\.pt: corrupt: record '[^']+/data/1' has CRC-32"):
            load_checked(path, crc32)


def test_other_version_and_damaged_structure_are_refused(tmp_path, tiny_config, tokenizer):
    save_model(tmp_path / "m.pt", SigLIP(tiny_config), tokenizer)
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**payload, "version": 2}, tmp_path / "v2.pt")
    with pytest.raises(ValueError, match=r"v2\.pt: siglip model file version 2, this toolkit reads 1"):
        siglip.load(tmp_path / "v2.pt")
    torch.save({k: v for k, v in payload.items() if k != "state_dict"}, tmp_path / "nostate.pt")
    with pytest.raises(ValueError, match=r"nostate\.pt: damaged siglip model file: no \['state_dict'\]"):
        siglip.load(tmp_path / "nostate.pt")
    flip_bit(tmp_path / "m.pt")
    with pytest.raises(ValueError, match=r"m\.pt: corrupt"):
        siglip.load(tmp_path / "m.pt")


def test_nonfinite_weights_are_not_resumed_from(run_dir):
    payload = torch.load(run_dir / LATEST, weights_only=True)
    payload["state_dict"]["b"] = torch.tensor([float("nan")])
    for p in (run_dir / LATEST, step_checkpoint_path(run_dir, 6)):
        p.unlink()
        digest_path(p).unlink()
    torch.save(payload, step_checkpoint_path(run_dir, 8))  # e.g. written by an older version without the guard
    payload, path = read_resumable(run_dir)
    assert path == step_checkpoint_path(run_dir, 4)


def test_no_usable_checkpoint_lists_every_file_and_why(run_dir, tmp_path_factory):
    for p in step_checkpoints(run_dir):
        flip_bit(p)
    with pytest.raises(
        ValueError, match=r"no usable checkpoint in .*\n.*checkpoint\.pt: corrupt.*\n.*00000004\.pt: corrupt"
    ):
        read_resumable(run_dir)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        read_resumable(tmp_path_factory.mktemp("empty"))


def test_a_killed_write_leaves_the_previous_checkpoint_and_its_temp_file_is_cleaned(
    run_dir, monkeypatch, tiny_config, tokenizer
):
    model = SigLIP(tiny_config)
    opt = torch.optim.AdamW(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def dies_half_way(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a file")
        raise KeyboardInterrupt  # stands for the process dying mid-write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save_train_state(step_checkpoint_path(run_dir, 8), model, tokenizer, "bicubic", opt, sched, 8, {})
    monkeypatch.undo()
    assert not step_checkpoint_path(run_dir, 8).exists() and read_resumable(run_dir)[0]["step"] == 6
    (run_dir / ".checkpoint-00000010.pt.abc.tmp").write_bytes(b"left by kill -9")  # no except-clause runs then
    save_train_state(step_checkpoint_path(run_dir, 10), model, tokenizer, "bicubic", opt, sched, 10, {})
    publish_checkpoint(run_dir, 10, keep=2)
    assert not list(run_dir.glob(".*.tmp"))
    assert [p.name for p in step_checkpoints(run_dir)] == ["checkpoint-00000010.pt", "checkpoint-00000006.pt"]
