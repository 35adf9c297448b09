python experiments/negatives.py
