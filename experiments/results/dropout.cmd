python experiments/dropout.py
