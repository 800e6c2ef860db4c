"""Training: FINE pre-training, OFA-Diffusion nested training, σ-only light retraining, metrics.

Kept import-light: `fine_deploy.train.pretrain.train` and `fine_deploy.train.retrain.retrain` are the
API behind `fine-deploy train` / `fine-deploy retrain`; both run under `accelerate launch` for DDP.
"""
