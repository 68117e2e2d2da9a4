"""``lit-rlhf fit`` and ``lit-rlhf validate``: the ``LightningCLI`` with lit_rlhf's defaults.

Kept apart from :mod:`lit_rlhf.cli` so that ``lit-rlhf --help`` and the other commands start without importing
Lightning's CLI machinery.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from typing import Any, NoReturn

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_rlhf import checkpoint_checks as ckpt_checks
from lit_rlhf.callbacks.hf_export import HFExport
from lit_rlhf.cli import find_user_error
from lit_rlhf.data.base import RLHFDataModule
from lit_rlhf.errors import ConfigError, UserError, debug_requested
from lit_rlhf.modules.base import RLHFModule
from lit_rlhf.parse_errors import condense_parse_error
from lit_rlhf.strategies import check_strategy, check_strategy_name, is_fsdp2

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
"""``--ckpt_path`` values that Lightning resolves itself (checked when the module loads them)."""


class LitRLHFArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose errors are one line: the option, what was given, what is accepted.

    jsonargparse's own report (every type tried, the whole given value) is kept for ``--debug`` and
    ``LIT_RLHF_DEBUG=1``.
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error or debug_requested():  # nested parsers raise to their caller; --debug: long form
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        parsers = [parser, *getattr(getattr(parser, "_subcommands_action", None), "choices", {}).values()]
        options = [option for p in parsers for action in p._actions for option in action.option_strings]
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"{prog}: error: {condense_parse_error(message, options)}\n")
        sys.stderr.write(
            f"('{prog} --help' lists the options; add --debug or set LIT_RLHF_DEBUG=1 for the parser's full message)\n"
        )
        self.exit(2)


class LitRLHFCLI(LightningCLI):
    """``LightningCLI`` with lit_rlhf's defaults.

    - ``model`` and ``data`` are chosen by ``class_path`` (subclass mode), e.g. ``lit_rlhf.modules.SFTModule``.
    - The HF export callback is always on (``--hf_export.dirname``).
    - ``config.yaml`` in the run dir is overwritten, so resuming with the same command just works.
    - ``--ckpt_path`` never changes the configuration: the module class, every value and every path come from the
      config and the command line. The checkpoint is checked before any model loads (readable, written by lit_rlhf,
      by the configured module class, with the same architecture settings, batch size, data seed and gradient
      accumulation; the world size once the Trainer exists), each mismatch one
      :class:`~lit_rlhf.checkpoint_checks.CheckpointMismatchError`.
    - A ``fit`` that fails before its first training step leaves no run folder behind when the folder did not exist
      before; an existing run folder is never removed (its ``config.yaml`` is put back).
    - Parse errors are one line (:class:`LitRLHFArgumentParser`), and an error a user can fix raised while the
      classes are built is re-raised as itself (jsonargparse wraps it in a ``ValueError``).
    - The subcommands are ``fit`` and ``validate`` (the modules define no test or predict step).
    """

    def __init__(self, *args: Any, parser_class: type[LightningArgumentParser] = LitRLHFArgumentParser, **kwargs: Any):
        self._resume_meta: dict[str, Any] | None = None
        self._resume_where = ""
        super().__init__(*args, parser_class=parser_class, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate``, with the Trainer arguments that the CLI fills in itself."""
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
        }

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(HFExport, "hf_export")

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` against the config, without merging anything of it into the config.

        A checkpoint folder (``--trainer.strategy fsdp2``) is checked through its ``meta.pt``, which holds all but the
        model and optimizer shards. (Lightning's own version loads the checkpoint's hyperparameters into the config,
        which would replace the configured module class, values and paths with the checkpoint's.)
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path or ckpt_path in SPECIAL_CKPT_PATHS:
            return
        where = f"--ckpt_path {ckpt_path}"
        if ckpt_checks.is_distributed_checkpoint(ckpt_path):
            checkpoint = ckpt_checks.read_distributed_checkpoint(ckpt_path)
        else:
            checkpoint = ckpt_checks.read_checkpoint(ckpt_path)
        meta = ckpt_checks.checkpoint_meta(checkpoint, where)
        model = config.get("model")
        if model is not None and model.get("class_path"):
            ckpt_checks.check_module_class(meta, _qualified_class_name(model["class_path"]), where)
            ckpt_checks.check_settings(checkpoint.get("hyper_parameters") or {}, model.get("init_args") or {}, where)
        if subcommand == "fit":
            data = config.get("data")
            data_args = (data.get("init_args") if data is not None else None) or {}
            trainer = config.get("trainer") or {}
            ckpt_checks.check_run_settings(
                meta,
                where,
                batch_size=data_args.get("batch_size"),
                data_seed=data_args.get("seed"),
                accumulate_grad_batches=trainer.get("accumulate_grad_batches"),
            )
            self._resume_meta = {"world_size": ckpt_checks.saved_world_size(meta)}  # checked once the Trainer exists
        self._resume_where = where
        self._ckpt_layout = ckpt_checks.checkpoint_layout(ckpt_path, checkpoint)  # checked once the Trainer exists
        del checkpoint

    def before_instantiate_classes(self) -> None:
        """Check the module's option values before anything is built: jsonargparse builds nested classes (a reward
        model given as ``model.init_args.reward``) before the module, and those may load a model."""
        from lit_rlhf.modules import checks

        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        model = config.get("model")
        if model is None or not model.get("class_path"):
            return
        check = {
            "lit_rlhf.modules.sft.SFTModule": checks.check_sft_options,
            "lit_rlhf.modules.reward.RewardModule": checks.check_reward_options,
            "lit_rlhf.modules.ppo.PPOModule": checks.check_ppo_options,
            "lit_rlhf.modules.grpo.GRPOModule": checks.check_grpo_options,
            "lit_rlhf.modules.dpo.DPOModule": checks.check_dpo_options,
            "lit_rlhf.modules.online_dpo.OnlineDPOModule": checks.check_online_dpo_options,
        }.get(_qualified_class_name(model["class_path"]))
        init_args = model.get("init_args")
        if check is not None and init_args is not None:
            check(init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args))

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None or user_error is err:
                raise
            raise user_error.with_traceback(user_error.__traceback__) from None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer; an invalid Trainer option (``--trainer.accelerator tpux``, ``--trainer.devices 0``) is a
        :class:`~lit_rlhf.errors.ConfigError` carrying Lightning's message."""
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        config = self.config_init.get(self.subcommand, self.config_init) if self.subcommand else self.config_init
        strategy = (config.get("trainer") or {}).get("strategy")
        if isinstance(strategy, str):
            check_strategy_name(strategy, type(self.model).__name__)
        try:
            return super().instantiate_trainer(**kwargs)
        except (ValueError, MisconfigurationException) as err:
            if isinstance(err, UserError):
                raise
            message = " ".join(str(err).split())
            hint = "('fit --help' lists the --trainer.* options)"
            raise ConfigError(f"invalid trainer option: {message} {hint}") from err

    def after_instantiate_classes(self) -> None:
        """Refuse a strategy the module cannot train under before any process is launched, and (resuming a fit)
        another world size than the checkpoint's."""
        trainer = self.trainer
        check_strategy(trainer.strategy, type(self.model).__name__, trainer.num_nodes * trainer.num_devices)
        if getattr(self, "_ckpt_layout", None) is not None:
            name = type(trainer.strategy).__name__
            ckpt_checks.check_layout(self._ckpt_layout, is_fsdp2(trainer.strategy), name, self._resume_where)
        if self._resume_meta is not None and self.subcommand == "fit":
            ckpt_checks.check_run_settings(self._resume_meta, self._resume_where, world_size=self.trainer.world_size)

    def _run_subcommand(self, subcommand: str) -> None:
        if subcommand != "fit":
            super()._run_subcommand(subcommand)
            return
        guard = RunFolderGuard(run_folders(self.trainer))
        self.trainer.callbacks.append(guard)
        try:
            super()._run_subcommand(subcommand)
        except SystemExit as exit_:
            if exit_.code not in (None, 0):
                guard.undo(self.trainer)
            raise
        except BaseException:
            guard.undo(self.trainer)
            raise


def _qualified_class_name(class_path: str) -> str:
    """``lit_rlhf.modules.sft.SFTModule`` for ``lit_rlhf.modules.SFTModule`` (where the class is defined)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return class_path
    return f"{cls.__module__}.{cls.__qualname__}"


def run_folders(trainer: Trainer) -> list[str]:
    """The folders a ``fit`` writes into: the run folder (the first logger's, else ``default_root_dir``) and any
    checkpoint folder set apart from it."""
    folders = [trainer.log_dir or trainer.default_root_dir]
    folders += [cb.dirpath for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint) and cb.dirpath]
    return [os.path.abspath(os.fspath(f)) for f in folders if f]


class RunFolderGuard(Callback):
    """Undo what a ``fit`` wrote to its run folders when it fails before its first training step.

    A folder that did not exist before the command is removed (with the empty parent folders the command created);
    an existing one is kept, with its ``config.yaml`` put back as it was.

    Args:
        folders: the run folders (:func:`run_folders`), recorded before anything is written.
        config_filename: the name of the saved config in the run folder.
    """

    def __init__(self, folders: list[str], config_filename: str = "config.yaml") -> None:
        self.created: dict[str, str] = {}  # folder -> the topmost folder above it (or itself) that did not exist
        self.configs: dict[str, bytes | None] = {}  # existing folder -> its config.yaml (None: it had none)
        self.config_filename = config_filename
        self.stepped = False
        for folder in dict.fromkeys(folders):
            if os.path.exists(folder):
                path = os.path.join(folder, config_filename)
                self.configs[folder] = open(path, "rb").read() if os.path.isfile(path) else None
                continue
            top = folder
            while not os.path.exists(os.path.dirname(top)) and os.path.dirname(top) != top:
                top = os.path.dirname(top)
            self.created[folder] = top

    def on_train_batch_end(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        self.stepped = True

    def undo(self, trainer: Trainer) -> None:
        """Remove the created folders and restore the existing ones' configs, unless a training step was taken."""
        if self.stepped or not trainer.is_global_zero:
            return
        for folder, top in self.created.items():
            shutil.rmtree(folder, ignore_errors=True)
            parent = os.path.dirname(folder)
            while folder != top and os.path.isdir(parent):
                try:
                    os.rmdir(parent)  # only if empty: another run may have started beside this one
                except OSError:
                    break
                if parent == top:
                    break
                parent = os.path.dirname(parent)
        for folder, content in self.configs.items():
            path = os.path.join(folder, self.config_filename)
            if content is not None:
                with open(path, "wb") as f:
                    f.write(content)
            elif os.path.isfile(path):
                os.remove(path)


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
        auto_configure_optimizers=False,  # the modules build their AdamW and schedule from model.init_args
        parser_kwargs={"prog": prog} if prog else None,
        args=args,
        run=run,
    )
