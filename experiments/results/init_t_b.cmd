python experiments/init_t_b.py
