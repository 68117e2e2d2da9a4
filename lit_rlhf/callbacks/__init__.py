"""Callbacks: Hugging Face export at the end of fit."""

from lit_rlhf.callbacks.hf_export import HFExport

__all__ = ["HFExport"]
