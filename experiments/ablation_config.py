"""The base of every experiments/ sweep: the demo (configs/demo_config.py) with "mu" towers (width 64,
2 blocks: ~8x less compute than the demo's "tiny", so that a sweep of several runs fits in minutes on
a shared 2-core machine) and zero-shot classification of the held-out digits run once, at the end.
Each sweep script sets the run length (--steps) and what it varies; nothing else differs.

    python training/train.py --config experiments/ablation_config.py --steps 150 --output-dir runs/ablation
    -> prints digits/acc1 of the ~1-minute run (2 free cores)
"""

from pathlib import Path

from siglip.config import Config, EvalConfig, ModelConfig, load_config_file


def get_config() -> Config:
    cfg = load_config_file(Path(__file__).resolve().parents[1] / "configs" / "demo_config.py")
    cfg.model = ModelConfig.from_variant("mu/4", image_size=16, text_length=16, vocab_size=256)
    cfg.train.epochs = 0  # the sweeps give --steps
    cfg.train.checkpoint_every = 0
    cfg.train.log_every = 10
    cfg.optim.lr = 2e-3
    cfg.data.num_workers = 0  # 16 px digits decode in the training process faster than a worker starts
    cfg.evals = [EvalConfig(dataset="digits")]
    return cfg
