"""lit_rlhf: PyTorch Lightning modules for RLHF of language models (SFT, reward modelling, PPO, GRPO)."""

__version__ = "0.1.0"
