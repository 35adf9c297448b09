"""The seed's recipe: SigLIP B/16 at 224 px, batch 256, AdamW lr 1e-4 with 2,000 warmup steps and
cosine decay over 100,000 steps, weight decay 0.1.

    python training/train.py --config configs/base_config.py --data-path DATA --batch-size 256 \
        --learning-rate 1e-4 --epochs 50 --output-dir ./checkpoints
    -> ./checkpoints/siglip_base.pt (plus checkpoint.pt, metrics.jsonl, config.json)

The paper's own recipe differs: lr 1e-3, beta2 0.95, weight decay 1e-4 decoupled from the lr
(--config.optim.weight_decay=<1e-4 / lr> in PyTorch's AdamW convention), batch 32k.
"""

from siglip.config import Config, ModelConfig


def get_config() -> Config:
    cfg = Config()
    cfg.model = ModelConfig.from_variant("B/16", image_size=224, text_length=64, vocab_size=32000)
    cfg.tokenizer.vocab_size = 32000
    cfg.train.batch_size = 256
    cfg.train.steps = 100_000
    cfg.optim.lr = 1e-4
    cfg.optim.warmup_steps = 2000
    cfg.optim.weight_decay = 0.1
    return cfg
