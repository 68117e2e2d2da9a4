"""``lit-rlhf fit`` and ``lit-rlhf validate``: the ``LightningCLI`` with lit_rlhf's defaults.

Kept apart from :mod:`lit_rlhf.cli` so that ``lit-rlhf --help`` and the other commands start without importing
Lightning's CLI machinery.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_rlhf.callbacks.hf_export import HFExport
from lit_rlhf.data.base import RLHFDataModule
from lit_rlhf.modules.base import RLHFModule


class LitRLHFCLI(LightningCLI):
    """``LightningCLI`` with lit_rlhf's defaults.

    - ``model`` and ``data`` are chosen by ``class_path`` (subclass mode), e.g. ``lit_rlhf.modules.SFTModule``.
    - The HF export callback is always on (``--hf_export.dirname``).
    - ``config.yaml`` in the run dir is overwritten, so resuming with the same command just works.
    - ``--ckpt_path`` is checked before anything is built.
    - The subcommands are ``fit`` and ``validate`` (the modules define no test or predict step).
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate``, with the Trainer arguments that the CLI fills in itself."""
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(HFExport, "hf_export")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        ckpt_path = config.get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry") and not os.path.isfile(ckpt_path):
            raise FileNotFoundError(f"--ckpt_path {ckpt_path}: no such checkpoint file")


def run_lightning_cli(
    args: list[str] | dict[str, Any] | None = None, run: bool = True, prog: str | None = None
) -> LitRLHFCLI:
    """Build (and with ``run``, execute) the CLI on ``args`` (``None``: ``sys.argv[1:]``)."""
    return LitRLHFCLI(
        RLHFModule,
        RLHFDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": prog} if prog else None,
        args=args,
        run=run,
    )
