"""Training helpers used by training/train.py."""
