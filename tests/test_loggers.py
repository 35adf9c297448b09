"""--config.log.tensorboard / --config.log.wandb: the metrics.jsonl scalars, offline-safe W&B, clear
errors when an extra is missing. (TensorBoard's events are read back in tests/test_report.py.)"""

from __future__ import annotations

import json
import sys
import types

import pytest

from siglip.config import LogConfig
from siglip.train.loggers import TensorBoardSink, WandbSink, scalar_sinks, scalars_of, wandb_mode
from siglip.train.metrics_log import MetricsLog


class FakeWandb(types.ModuleType):
    """What WandbSink uses of the wandb package: init(...) -> run with log/finish; util.generate_id."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], 0
        self.util = types.SimpleNamespace(generate_id=lambda: f"id{len(self.inits)}")

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self
        return types.SimpleNamespace(
            log=lambda data, step: fake.logged.append((step, data)),
            finish=lambda: setattr(fake, "finished", fake.finished + 1),
        )


def test_scalars_are_the_numbers_of_a_record():
    record = {"step": 3, "loss": 1.5, "skipped": 0, "resumed": True, "note": "x", "digits/acc1": 0.5}
    assert scalars_of(record) == {"loss": 1.5, "skipped": 0.0, "digits/acc1": 0.5}


def test_wandb_is_offline_without_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    assert wandb_mode() == "offline"
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password KEY\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_metrics_log_sends_the_same_scalars_to_wandb(monkeypatch, tmp_path):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": 1, "loss": 2.0, "t": 10.0}, {"step": 1, "digits/acc1": 0.25}]
    log = MetricsLog(run / "metrics.jsonl", 10, 0, sinks=scalar_sinks(LogConfig(wandb="proj"), run, {"a": 1}))
    for r in records:
        log.write(r)
    log.close()
    assert fake.inits[0]["mode"] == "offline" and fake.inits[0]["project"] == "proj"
    assert fake.inits[0]["dir"] == str(run) and fake.inits[0]["config"] == {"a": 1}
    written = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert fake.logged == [(r["step"], {k: v for k, v in r.items() if k != "step"}) for r in written]
    assert fake.finished == 1
    WandbSink("proj", run, "run", {})  # a resumed run continues the same W&B run
    assert fake.inits[1]["id"] == fake.inits[0]["id"] and fake.inits[1]["resume"] == "allow"


def test_missing_extras_name_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'siglip\[wandb\]'"):
        WandbSink("proj", tmp_path, "run", {})
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"pip install 'siglip\[tensorboard\]'"):
        TensorBoardSink(tmp_path / "tb")
    assert scalar_sinks(LogConfig(), tmp_path, {}) == []  # nothing asked, nothing imported
