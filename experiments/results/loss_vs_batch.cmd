python experiments/loss_vs_batch.py
