"""Fine-tune a published SigLIP checkpoint (the seed's recipe): batch 128, lr 5e-5, 10 epochs, the
image tower at 0.1x the lr (paper Sec. 4). Architecture, tokenizer and preprocessing come from the
checkpoint; t' and b start from its values.

    python training/train.py --config configs/finetune_config.py --pretrained-path /models/siglip-base-patch16-224 \
        --data-path DATA --batch-size 128 --learning-rate 5e-5 --epochs 10
    -> ./checkpoints/siglip_finetune.pt; export it with
    python -m siglip.interop ./checkpoints/siglip_finetune.pt ./export --to hf

--pretrained-path takes our .pt, a Hugging Face folder, an open_clip checkpoint or a big_vision .npz
(--config.train.pretrained_tokenizer=spiece.model when no SentencePiece model lies beside it).
SigLiT (frozen image tower, text tower trained): --config.optim.image_lr_mult=0.
Another resolution: --config.model.image_size=384 (position embeddings resized as big_vision does).
"""

from pathlib import Path

from siglip.config import Config, load_config_file


def get_config() -> Config:
    cfg = load_config_file(Path(__file__).with_name("base_config.py"))
    cfg.train.batch_size = 128
    cfg.train.epochs = 10
    cfg.optim.lr = 5e-5
    cfg.optim.warmup_steps = 200  # fine-tuning runs are short
    cfg.optim.image_lr_mult = 0.1
    return cfg
