"""Parquet and Arrow where pairs are used, not trained on: `siglip embed` gives the rows a manifest of
the same images gives; retrieval and zero-shot on the demo digits written as parquet give the
metrics of the digits as files; training from the parquet resumes to the uninterrupted losses."""

from __future__ import annotations

import os

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import siglip  # noqa: E402
from siglip.cli import main  # noqa: E402
from siglip.config import EvalConfig  # noqa: E402
from siglip.data.digits import ensure_digits, write_digits_parquet  # noqa: E402
from siglip.eval.evaluators import run_evals  # noqa: E402
from siglip.eval.prompts import DIGITS_TEMPLATES  # noqa: E402
from siglip.index import read_items, read_meta  # noqa: E402
from tests.test_cli import COLOURS, save_tiny  # noqa: E402
from tests.test_train_e2e import losses  # noqa: E402

from .conftest import write_image  # noqa: E402


def test_embed_parquet_rows_equal_the_manifest_rows(tmp_path, tokenizer):
    model = str(save_tiny(tmp_path / "m.pt", tokenizer))
    paths = [write_image(tmp_path / "img" / f"{i}.png", COLOURS[i % 6], (16 + i, 14)) for i in range(6)]
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(f"{p},photo {i}\n" for i, p in enumerate(paths)))
    images = [{"bytes": p.read_bytes(), "path": None} for p in paths]
    images[4] = {"bytes": b"not an image", "path": None}
    pq.write_table(pa.table({"image": images, "text": [f"photo {i}" for i in range(6)]}), tmp_path / "p.parquet",
                   row_group_size=4)  # fmt: skip
    for src, out in ((tmp_path / "pairs.csv", "m_idx"), (tmp_path / "p.parquet", "p_idx")):
        assert main(["embed", str(src), "--model", model, "--out", str(tmp_path / out), "--workers", "0"]) == 0
    m, p = read_meta(tmp_path / "m_idx"), read_meta(tmp_path / "p_idx")
    zm, zp = np.load(tmp_path / "m_idx" / m["embeddings"]), np.load(tmp_path / "p_idx" / p["embeddings"])
    assert p["count"] == 5 and len(p["skipped"]) == 1 and "p.parquet::4" in str(p["skipped"])
    np.testing.assert_array_equal(zp, np.delete(zm, 4, axis=0))  # the same pixels, from bytes in the file
    items = read_items(tmp_path / "p_idx", p, list(range(5)))
    assert [it["caption"] for it in items] == [f"photo {i}" for i in (0, 1, 2, 3, 5)]
    assert items[4]["row"] == 5 and items[4]["file"] == str(tmp_path / "p.parquet")


def test_digits_as_parquet_evaluate_as_the_files_do(tmp_path, tokenizer):
    root, pq_dir = tmp_path / "digits", tmp_path / "digits_parquet"
    ensure_digits(root)
    write_digits_parquet(root, pq_dir)
    ds = datasets.load_dataset("parquet", data_files=str(pq_dir / "heldout.parquet"), split="train")
    assert isinstance(ds.features["image"], datasets.Image) and ds.features["label"].names[7] == "seven"
    model = siglip.load(save_tiny(tmp_path / "m.pt", tokenizer))
    common = (model.model, model.tokenizer, 16, "bicubic", str(root), 0)
    (tmp_path / "templates.txt").write_text("\n".join(DIGITS_TEMPLATES))  # the same prompts for both
    templates = str(tmp_path / "templates.txt")
    files = run_evals([EvalConfig("digits", templates=templates), EvalConfig("digits", task="retrieval")], *common)
    heldout = str(pq_dir / "heldout.parquet")
    tables = run_evals(
        [
            EvalConfig("parquet", path=heldout, templates=templates),
            EvalConfig("parquet", task="retrieval", path=heldout),
        ],
        *common,
    )
    assert files["digits/acc1"] == pytest.approx(tables["parquet/acc1"], abs=1e-9)
    recall = [k for k in files if "recall@" in k]
    assert recall and all(files[k] == tables[k.replace("digits/", "parquet/")] for k in recall)


CONFIG = """
from siglip.config import Config, ModelConfig

def get_config():
    cfg = Config()
    cfg.model = ModelConfig.from_variant("mu/4", image_size=16, text_length=8, vocab_size=128)
    cfg.data.num_workers = 2
    cfg.data.shuffle_buffer = 200
    cfg.tokenizer.vocab_size = 128
    cfg.train.batch_size = 32
    cfg.train.steps = 8
    cfg.train.seed = 1
    cfg.train.device = "cpu"
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = 2
    cfg.optim.warmup_steps = 2
    return cfg
"""


@pytest.mark.slow  # 3 training runs (~40 s on 2 idle cores); the stream's resume is also tested in test_parquet.py
def test_training_from_parquet_resumes_to_the_uninterrupted_losses(tmp_path):
    """Stopped at step 5 of 8 (checkpoints every 2) and resumed: the same 8 losses; 2 workers, the
    digits' row groups of 100 dealt to them in chunks of >= 200 rows."""
    import subprocess
    import sys

    from .conftest import REPO

    pq_dir = write_digits_parquet(tmp_path / "digits", tmp_path / "pq")
    (tmp_path / "tiny_config.py").write_text(CONFIG)

    def run(out, *extra):
        cmd = [sys.executable, str(REPO / "training/train.py"), "--config", str(tmp_path / "tiny_config.py"),
               "--data-path", str(pq_dir / "train.parquet"), "--output-dir", str(tmp_path / out), *extra]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    run("straight")
    run("resumed", "--config.train.stop_at_step=5")
    assert len(losses(tmp_path / "resumed")) == 5
    run("resumed", "--resume")
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")


def test_demo_epochs_from_parquet_feed_the_csv_rows_augmented_alike(tmp_path):
    """The demo config from its digits as parquet: in each epoch every batch row is a row of the CSV,
    with its caption and the very augmentation (crop, colour jitter) the CSV path gives that row in that
    epoch, each row at most once, and as many rows as from the CSV. What differs is only the order
    (row groups shuffled, then a buffer). Demo accuracies from both: tests/test_parquet_use.py's slow test."""
    import importlib.util

    from siglip.data import PairDataset
    from siglip.distributed import Runtime
    from siglip.train.build import build_data, build_tokenizer, find_source
    from siglip.transforms import draft_size, model_transform

    from .conftest import REPO

    spec = importlib.util.spec_from_file_location("demo_config", REPO / "configs/demo_config.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    pq_dir = write_digits_parquet(tmp_path / "digits", tmp_path / "pq")

    def data_for(path):
        cfg = demo.get_config()
        cfg.data.path, cfg.data.num_workers = str(path), 0
        source = find_source(cfg)
        tokenizer = build_tokenizer(cfg, None, source, Runtime())
        return cfg, source, tokenizer, build_data(cfg, source, tokenizer, Runtime())

    cfg, csv_source, tokenizer, csv_data = data_for(tmp_path / "digits" / "train.csv")
    _, _, pq_tokenizer, pq_data = data_for(pq_dir / "train.parquet")
    assert pq_tokenizer.proto == tokenizer.proto and pq_data.steps_per_epoch == csv_data.steps_per_epoch
    d = cfg.data
    transform = model_transform(cfg.model, {"image_size": cfg.model.image_size, "resample": d.resample,
                                            "max_num_patches": d.max_num_patches},
                                random_resized_crop=d.random_resized_crop, crop_scale_min=d.crop_scale_min,
                                horizontal_flip=d.horizontal_flip, color_jitter=d.color_jitter)  # fmt: skip
    rows = PairDataset(csv_source.pairs, transform, seed=cfg.train.seed,
                       draft=draft_size(cfg.model.image_size, d.random_resized_crop, d.crop_scale_min))  # fmt: skip
    for epoch in (3,):  # an epoch past the first: the augmentation follows the epoch
        rows.set_epoch(epoch)
        want = {}
        for i in range(len(rows)):
            pixels, caption = rows[i]
            want[pixels.numpy().tobytes()] = tokenizer([caption])[0].tolist()
        assert len(want) == len(rows)  # every row's augmented pixels are its own
        seen = []
        for batch in pq_data.batches(epoch, 0):
            for pixels, ids in zip(batch["pixels"], batch["ids"]):
                key = pixels.numpy().tobytes()
                assert want.get(key) == ids.tolist(), "a parquet row that is no CSV row of this epoch, as augmented"
                seen.append(key)
        assert len(seen) == len(set(seen)) == csv_data.steps_per_epoch * cfg.train.batch_size


@pytest.mark.slow
def test_demo_from_parquet_reaches_the_accuracy_from_csv(tmp_path):
    """The whole demo config (660 steps) from digits/train.csv and from the same pairs as parquet, seeds
    0, 1 and 2 each (six trainings, about 35 minutes on 2 cores): the mean held-out zero-shot acc1 of the
    two sources differ by no more than Welch's 5 % bound for three runs a side. The tiny demo's result
    is chaotic in the seed (2026-12-07: CSV 0.802-0.967 over seeds 0-5), so one run a side cannot tell
    a fault from noise; what the sources feed is checked exactly by the test above. A parquet path that
    fed wrong pairs trains to chance (0.1), far outside the bound."""
    import statistics
    import subprocess
    import sys

    from .conftest import REPO

    pq_dir = write_digits_parquet(tmp_path / "digits", tmp_path / "pq")
    acc: dict[str, list[float]] = {"csv": [], "parquet": []}
    for seed in (0, 1, 2):
        for name, data in (("csv", str(tmp_path / "digits" / "train.csv")), ("parquet", str(pq_dir / "train.parquet"))):
            cmd = [sys.executable, str(REPO / "training/train.py"), "--config", str(REPO / "configs/demo_config.py"),
                   "--data-path", data, "--output-dir", str(tmp_path / f"{name}-{seed}"),
                   f"--config.data.digits_root={tmp_path / 'digits'}", f"--config.train.seed={seed}"]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=3600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            line = next(x for x in proc.stdout.splitlines() if x.startswith("digits/acc1"))
            acc[name].append(float(line.split(": ")[1]))
    mean = {k: statistics.mean(v) for k, v in acc.items()}
    bound = 2.776 * (sum(statistics.variance(v) / len(v) for v in acc.values())) ** 0.5  # t(0.975, df 4)
    print(f"held-out zero-shot acc1: csv {acc['csv']} mean {mean['csv']:.4f}; parquet {acc['parquet']} "
          f"mean {mean['parquet']:.4f}; |difference| {abs(mean['parquet'] - mean['csv']):.4f}, bound {bound:.4f}")  # fmt: skip
    assert mean["csv"] > 0.8 and min(acc["parquet"]) > 0.5, acc
    assert abs(mean["parquet"] - mean["csv"]) <= max(bound, 0.02), acc
