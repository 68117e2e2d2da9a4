"""Export the trained model as a Hugging Face ``save_pretrained`` folder at the end of fit."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class HFExport(L.Callback):
    """At the end of ``fit``, write ``<run dir>/<dirname>`` with the model (safetensors) and tokenizer.

    The run dir is ``trainer.log_dir`` (e.g. ``runs/arithmetic/sft``), so the next stage can point
    ``model_name_or_path`` at ``runs/arithmetic/sft/hf``. The LightningCLI of lit_rlhf always adds this callback;
    set ``--hf_export.dirname null`` to skip the export.

    Args:
        dirname: folder name inside the run dir; ``None`` disables the export.
    """

    def __init__(self, dirname: str | None = "hf") -> None:
        self.dirname = dirname

    def export_path(self, trainer: L.Trainer) -> str | None:
        if self.dirname is None:
            return None
        return os.path.join(trainer.log_dir or trainer.default_root_dir, self.dirname)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.export_path(trainer)
        if path is None:
            return
        pl_module.export_hf(path)  # every process: under FSDP2 the weights are gathered to rank 0, which writes
        rank_zero_info(f"Exported the Hugging Face model to {path}")
