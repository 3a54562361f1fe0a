"""The training workspace of one run: the Trainer loop (trainer), checkpoint files (checkpoint), the locked run dir
(run_dir), the weight EMA (ema), optimizer and LR schedule (optim), settings checks (settings), DDP (distributed),
stop signals (graceful_stop), metrics and SwanLab (experiment_logger), and device and seeding (runtime)."""
