"""Callbacks: Hugging Face export at the end of fit; win rate of the policy against its reference at validation."""

from lit_rlhf.callbacks.hf_export import HFExport
from lit_rlhf.callbacks.win_rate import WinRateCallback

__all__ = ["HFExport", "WinRateCallback"]
