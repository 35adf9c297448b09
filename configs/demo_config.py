"""A tiny SigLIP trained from scratch on the bundled handwritten digits, on a laptop CPU.

    python training/train.py --config configs/demo_config.py --output-dir runs/demo
    -> trains ~2-3 minutes on 2 cores, then prints the zero-shot accuracy on the 359 held-out
       digits (digits/acc1 around 0.95); the model is runs/demo/siglip_demo.pt

The data path `digits` writes scikit-learn's bundled digits under data/digits on first use
(train.csv manifest + heldout/<class>/ folders); any manifest of them works the same way.
"""

from siglip.config import Config, EvalConfig, ModelConfig


def get_config() -> Config:
    cfg = Config()
    cfg.model = ModelConfig.from_variant("tiny/4", image_size=32, text_length=16, vocab_size=256)
    cfg.data.path = "digits"
    cfg.data.num_workers = 1
    cfg.tokenizer.vocab_size = 256
    cfg.train.batch_size = 64
    cfg.train.epochs = 25
    cfg.train.device = "cpu"
    cfg.train.checkpoint_every = 200
    cfg.train.log_every = 20
    cfg.train.output_dir = "runs/demo"
    cfg.optim.lr = 1e-3
    cfg.optim.warmup_steps = 50
    cfg.optim.weight_decay = 1e-4
    cfg.evals = [EvalConfig(dataset="digits", every=200)]
    return cfg
