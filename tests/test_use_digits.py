"""The `siglip` command on the bundled digits with the trained demo model: text search finds the
digit asked for, classify makes the zero-shot evaluator's predictions, score is the forward's
sigmoid(t * cos + b). Slow: it trains the demo model first (configs/demo_config.py, 660 steps, a few
minutes on 2 free cores); SIGLIP_DEMO_MODEL=runs/demo/siglip_demo.pt reuses one `make demo` made.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import siglip
from siglip.cli import main
from siglip.data.digits import DIGITS_CLASSNAMES, ensure_digits
from siglip.eval.datasets import classification_set
from siglip.eval.embed import embed_images
from siglip.eval.zero_shot import class_embeddings

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    model = os.environ.get("SIGLIP_DEMO_MODEL", "")
    if not model:
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2", HF_HUB_OFFLINE="1")
        cmd = [sys.executable, str(ROOT / "training/train.py"), "--config", str(ROOT / "configs/demo_config.py"),
               "--output-dir", str(tmp / "demo"), f"--config.data.digits_root={tmp / 'digits'}",
               "--config.train.log_every=1000"]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=tmp, env=env, capture_output=True)
        model = str(tmp / "demo" / "siglip_demo.pt")
    ensure_digits(tmp / "digits")
    assert main(["embed", str(tmp / "digits" / "heldout"), "--model", model, "--out", str(tmp / "idx"),
                 "--workers", "0"]) == 0  # fmt: skip
    return tmp, model


def test_text_search_finds_the_digit(demo, capsys):
    tmp, model = demo
    capsys.readouterr()
    hits = []
    for digit in DIGITS_CLASSNAMES:
        assert main(["search", str(tmp / "idx"), f"a handwritten {digit}", "-k", "10", "--json"]) == 0
        results = json.loads(capsys.readouterr().out)
        hits.append(sum(Path(r["path"]).parent.name == digit for r in results))
    # precision@10 summed over the ten digits: chance is 10; the demo model (acc1 ~0.93) is far above
    assert sum(hits) >= 50, hits
    assert sorted(hits)[4] >= 5, hits  # the median digit: at least half of its top 10


def test_classify_makes_the_zero_shot_evaluators_predictions(demo, capsys):
    tmp, model_path = demo
    data = classification_set("digits", str(tmp / "digits"), "", "", "")
    (tmp / "templates.txt").write_text("\n".join(data.templates) + "\n")
    capsys.readouterr()
    assert main(["classify", str(tmp / "digits" / "heldout"), "--model", model_path, "--labels", ",".join(data.classnames),
                 "--templates-file", str(tmp / "templates.txt"), "--json", "--workers", "0"]) == 0  # fmt: skip
    out = {r["path"]: r["top"] for r in json.loads(capsys.readouterr().out)}
    model = siglip.load(model_path)
    cls = class_embeddings(model.model, model.tokenizer, data.classnames, data.templates)
    img, ok = embed_images(model.model, data.images, model.preprocess, num_workers=0)
    want = (img @ cls.T).argmax(1)  # the zero-shot evaluator's predictions
    assert ok.all() and len(out) == len(data.images)
    assert [out[os.path.abspath(p)] for p in data.images] == [data.classnames[i] for i in want]
    acc = (want == torch.tensor(data.labels)).float().mean()
    assert acc > 0.5


def test_score_is_the_forwards_sigmoid(demo):
    tmp, model_path = demo
    model = siglip.load(model_path)
    images = sorted((tmp / "digits" / "heldout" / "seven").glob("*.png"))[:3]
    texts = ["a handwritten seven", "a handwritten one", "the digit two"]
    pixels = torch.stack([model.preprocess(siglip.data.load_image(str(p))) for p in images])
    with torch.no_grad():
        zimg, ztxt = model.model(pixels, model.tokenizer(texts))
        want = torch.sigmoid(model.model.logits(zimg, ztxt))
    torch.testing.assert_close(model.score(images, texts), want, atol=1e-6, rtol=0)
