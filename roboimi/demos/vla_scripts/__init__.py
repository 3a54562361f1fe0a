"""Entry points of training and evaluation (also installed as roboimi-train and roboimi-eval)."""
