"""What a checkpoint must match before a run resumes from it, and what a resumed run may change.

A lit_rlhf checkpoint records, beside Lightning's state, the module class that wrote it, the number of processes
(world size), the data settings that fix the order of the training batches, and a fingerprint of the tokenizer
(``checkpoint["lit_rlhf"]``). Resuming checks them against the run to resume, before any model loads where the
command line allows it (:mod:`lit_rlhf.lightning_cli`) and again in ``RLHFModule.on_load_checkpoint`` (so that
``Trainer.fit(ckpt_path=...)`` behaves the same). Every mismatch is a :class:`CheckpointMismatchError` that names the
checkpoint file and the setting, in one line.

A changed setting of the module (``model.init_args.*``) is either applied by the resumed run or refused
(:func:`setting_policy`); paths (model folders, data files, reward models) always come from the current config.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import torch

from lit_rlhf.errors import UserError

CHECKPOINT_KEY = "lit_rlhf"
"""The key of lit_rlhf's own entry in a Lightning checkpoint."""


class CheckpointMismatchError(UserError):
    """``--ckpt_path`` points to a checkpoint this run cannot resume from (unreadable, foreign or incompatible)."""


PATH_SETTINGS = frozenset(
    {"model_name_or_path", "tokenizer_name_or_path", "policy_name_or_path", "critic_name_or_path", "reward", "rewards"}
)
"""Settings that name where something is loaded from: always those of the current config, never compared."""

REFUSED_SETTINGS: dict[str, str] = {
    "model_config": "it sets the architecture of the saved weights",
    "dtype": "the saved weights and optimizer moments are in the saved dtype",
    "pad_token": "it changes the vocabulary the saved weights index",
    "freeze_backbone": "it changes which parameters the saved optimizer state holds",
    "peft_config": "it sets which weights train, which the checkpoint and its optimizer state hold",
    "load_in_4bit": "the adapters were trained on the saved run's base weights",
}
"""Settings that cannot change on resume, with the reason."""

OPTIMIZER_SETTINGS = frozenset(
    {
        "learning_rate",
        "actor_learning_rate",
        "critic_learning_rate",
        "weight_decay",
        "betas",
        "warmup_steps",
        "lr_schedule",
        "min_lr_ratio",
        "adamw_implementation",
    }
)
"""Settings of the restored optimizers and schedules: the resumed run's optimizers use the configured values."""

RUN_SHAPE_REASONS: dict[str, str] = {
    "world_size": "each process reads its own share of every batch, so the saved data position and random streams "
    "belong to that many processes",
    "batch_size": "the saved data position counts batches of the saved size, so the rows seen so far would change",
    "data_seed": "it sets the order of the training rows, so the rows seen so far would change",
    "accumulate_grad_batches": "it changes how many batches make one optimizer step, so the saved step count would "
    "no longer match the data position",
}
"""Settings of the run (not of the module) that cannot change on resume, with the reason."""

RUN_SHAPE_OPTIONS: dict[str, str] = {
    "world_size": "--trainer.devices / --trainer.num_nodes",
    "batch_size": "data.init_args.batch_size",
    "data_seed": "data.init_args.seed",
    "accumulate_grad_batches": "trainer.accumulate_grad_batches",
}
"""Where each run setting is set, as the config spells it."""


def plain(value: Any) -> Any:
    """``value`` as plain JSON-like data (namespaces and mappings to dicts, tuples to lists) for comparisons."""
    if hasattr(value, "as_dict") and callable(value.as_dict):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def read_checkpoint(path: str) -> dict[str, Any]:
    """Open ``path`` as a Lightning checkpoint (tensors memory-mapped, nothing executed).

    Raises:
        CheckpointMismatchError: the file is missing, truncated, not a PyTorch file or not a Lightning checkpoint.
    """
    if not os.path.isfile(path):
        raise CheckpointMismatchError(f"--ckpt_path {path}: no such checkpoint file")
    checkpoint = _load_weights_only(path, f"--ckpt_path {path}: cannot be read as a checkpoint", mmap=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointMismatchError(
            f"--ckpt_path {path}: a PyTorch file but not a Lightning checkpoint (no state_dict); resume from a run's "
            "checkpoints/last.ckpt"
        )
    return checkpoint


def _load_weights_only(file: str, what: str, mmap: bool = False) -> Any:
    """``torch.load`` of ``file`` with nothing executed; a damaged file is a :class:`CheckpointMismatchError` starting
    with ``what``."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a damaged file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointMismatchError(
            f"{what} (truncated, damaged or not a PyTorch file: {reason}); resume from an intact checkpoint, e.g. "
            "the run's checkpoints/last.ckpt"
        ) from None


DISTRIBUTED_META_FILE = "meta.pt"
"""The file of a distributed checkpoint folder that holds everything but the model and optimizer shards."""

DISTRIBUTED_INDEX_FILE = ".metadata"
"""The index of a distributed checkpoint's shard files (``torch.distributed.checkpoint``)."""


def is_distributed_checkpoint(path: str) -> bool:
    """Whether ``path`` is a checkpoint folder (one shard file per process), as ``--trainer.strategy fsdp2`` writes."""
    return os.path.isdir(path)


def read_distributed_checkpoint(path: str) -> dict[str, Any]:
    """Open the ``meta.pt`` of the checkpoint folder ``path``: Lightning's checkpoint without the model and optimizer
    states (hyperparameters, loops, schedulers, callbacks and lit_rlhf's entry), nothing executed.

    Raises:
        CheckpointMismatchError: the folder lacks ``meta.pt``, the shard index ``.metadata`` or the ``.distcp``
            shards, or its ``meta.pt`` is damaged or not a Lightning checkpoint's.
    """
    meta_file = os.path.join(path, DISTRIBUTED_META_FILE)
    shards = [name for name in os.listdir(path) if name.endswith(".distcp")] if os.path.isdir(path) else []
    missing = [
        name
        for name, present in [
            (DISTRIBUTED_META_FILE, os.path.isfile(meta_file)),
            (DISTRIBUTED_INDEX_FILE, os.path.isfile(os.path.join(path, DISTRIBUTED_INDEX_FILE))),
            ("*.distcp shard files", bool(shards)),
        ]
        if not present
    ]
    if missing:
        raise CheckpointMismatchError(
            f"--ckpt_path {path}: a folder but not a complete distributed checkpoint (no {', no '.join(missing)}; "
            "a --trainer.strategy fsdp2 checkpoint folder holds meta.pt, .metadata and one .distcp file per "
            "process); resume from a run's checkpoints/last.ckpt"
        )
    checkpoint = _load_weights_only(meta_file, f"--ckpt_path {path}: its {DISTRIBUTED_META_FILE} cannot be read")
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
        raise CheckpointMismatchError(
            f"--ckpt_path {path}: its {DISTRIBUTED_META_FILE} is not a Lightning checkpoint's; resume from a run's "
            "checkpoints/last.ckpt"
        )
    return checkpoint


FSDP2_MARK = "strategy"
"""The key of lit_rlhf's checkpoint entry that ``FSDP2Strategy`` sets to ``"fsdp2"`` on every checkpoint it writes."""


def checkpoint_layout(path: str, checkpoint: Mapping[str, Any]) -> str:
    """How the checkpoint at ``path`` stores its model and optimizer states.

    Returns:
        ``"folder"``: one shard file per process (FSDP2's distributed checkpoint); ``"fsdp2 file"``: one file written
        under FSDP2 (``save_distributed_checkpoint: false``: optimizer states numbered in the model's parameter order);
        ``"file"``: one file written on one device or under DDP (numbered in the optimizer's order).
    """
    if is_distributed_checkpoint(path):
        return "folder"
    meta = checkpoint.get(CHECKPOINT_KEY)
    return "fsdp2 file" if isinstance(meta, Mapping) and meta.get(FSDP2_MARK) == "fsdp2" else "file"


def check_layout(layout: str, fsdp2_run: bool, strategy_name: str, where: str) -> None:
    """Refuse a checkpoint whose layout (:func:`checkpoint_layout`) the run's strategy cannot load.

    A folder loads only under FSDP2 (``ModelParallelStrategy`` reads the shards). A file of a one-device or DDP run
    does not load under FSDP2: its optimizer states are numbered in the optimizer's parameter order, which FSDP2's
    loader takes for the model's order. A single file written under FSDP2 loads under every strategy.

    Args:
        layout: :func:`checkpoint_layout` of the checkpoint.
        fsdp2_run: the run shards its models with FSDP2 (:func:`lit_rlhf.strategies.is_fsdp2`).
        strategy_name: the run's strategy, as the message names it.
        where: the checkpoint, as named in the error.

    Raises:
        CheckpointMismatchError: naming both layouts and the way out.
    """
    if layout == "folder" and not fsdp2_run:
        raise CheckpointMismatchError(
            f"{where} is a distributed checkpoint folder (one shard file per process, written under --trainer.strategy "
            f"fsdp2), and this run's strategy ({strategy_name}) loads only single-file checkpoints: resume with "
            "--trainer.strategy fsdp2 and the saved number of processes"
        )
    if layout == "file" and fsdp2_run:
        raise CheckpointMismatchError(
            f"{where} is a single-file checkpoint of a run on one device or under DDP, and this run shards its models "
            f"with FSDP2 ({strategy_name}), which loads only FSDP2 checkpoints (a folder, or one file written with "
            "save_distributed_checkpoint false): resume with the strategy that wrote it, or start an FSDP2 run from "
            "the run's hf/ export without --ckpt_path"
        )


def checkpoint_meta(checkpoint: Mapping[str, Any], where: str) -> dict[str, Any]:
    """lit_rlhf's entry of ``checkpoint``; ``where`` names the file in the error.

    Raises:
        CheckpointMismatchError: the checkpoint was not written by a lit_rlhf module.
    """
    meta = checkpoint.get(CHECKPOINT_KEY)
    if not isinstance(meta, Mapping) or "module_class" not in meta:
        raise CheckpointMismatchError(
            f"{where} was not written by a lit_rlhf module, so a lit_rlhf run cannot resume from it; to start from "
            "its weights, save them as a Hugging Face folder and give that as the model path"
        )
    return dict(meta)


def check_module_class(meta: Mapping[str, Any], module_class: str, where: str) -> None:
    """Refuse a checkpoint written by another module class than ``module_class`` (a qualified class name)."""
    written_by = meta["module_class"]
    if written_by != module_class:
        raise CheckpointMismatchError(
            f"{where} was written by {written_by}, but this config trains {module_class}: a checkpoint resumes only "
            "the stage that wrote it; resume with that run's config, or start this stage from that run's hf/ export "
            "(a model path option) without --ckpt_path"
        )


def saved_world_size(meta: Mapping[str, Any]) -> int:
    """The number of processes of the run that wrote the checkpoint (1 when it recorded none)."""
    if meta.get("world_size") is not None:
        return int(meta["world_size"])
    per_rank = meta.get("rng_states_per_rank")
    return len(per_rank) if per_rank is not None else 1


def check_run_settings(meta: Mapping[str, Any], where: str, **configured: Any) -> None:
    """Refuse a change of a run setting that an exact resume depends on.

    Args:
        meta: the checkpoint's lit_rlhf entry.
        where: the checkpoint, as named in the error.
        configured: ``world_size``, ``batch_size``, ``data_seed``, ``accumulate_grad_batches`` of the run to resume;
            ``None`` (or absent) skips that setting, as does a checkpoint that recorded none.

    Raises:
        CheckpointMismatchError: the first setting that differs, with the reason and the way out.
    """
    saved = dict(meta.get("run") or {})
    saved["world_size"] = saved_world_size(meta)
    for name, reason in RUN_SHAPE_REASONS.items():
        new, old = configured.get(name), saved.get(name)
        if new is None or old is None or plain(new) == plain(old):
            continue
        raise CheckpointMismatchError(
            f"{where} was written by a run with {name} {old}, and this run has {new} ({RUN_SHAPE_OPTIONS[name]}): it "
            f"cannot change on resume because {reason}; resume with {name} {old}, or start a new run from the run's "
            "hf/ export without --ckpt_path"
        )


def setting_policy(name: str, saved: Mapping[str, Any], configured: Mapping[str, Any]) -> str | None:
    """Why setting ``name`` may not change from ``saved[name]`` to ``configured[name]`` on resume (``None``: it may).

    Paths are never compared (the current config's are used); :data:`REFUSED_SETTINGS` are refused; a changed
    ``kl_coef`` is refused when both runs have an adaptive KL controller (``adaptive_kl_target``), because its
    restored coefficient is training state and ``kl_coef`` only its start. Every other setting is applied.
    """
    if name in PATH_SETTINGS:
        return None
    if name in REFUSED_SETTINGS:
        return REFUSED_SETTINGS[name]
    adaptive = configured.get("adaptive_kl_target") is not None and saved.get("adaptive_kl_target") is not None
    if name == "kl_coef" and adaptive:
        return "the adaptive KL controller's coefficient is restored from the checkpoint; kl_coef only sets its start"
    return None


def compare_settings(
    saved: Mapping[str, Any], configured: Mapping[str, Any]
) -> tuple[list[tuple[str, Any, Any, str]], list[tuple[str, Any, Any]]]:
    """The module settings that differ between a checkpoint's hyperparameters and the run's.

    Args:
        saved: ``checkpoint["hyper_parameters"]``.
        configured: the run's module settings (``model.init_args`` or the module's ``hparams``).

    Returns:
        ``(refused, applied)``: ``(name, saved, configured, reason)`` for changes that cannot be made on resume,
        ``(name, saved, configured)`` for those the resumed run applies. Keys starting with ``_`` (Lightning's
        bookkeeping), paths and settings absent from either side are skipped.
    """
    saved_plain, configured_plain = plain(saved), plain(configured)
    for side in (saved_plain, configured_plain):
        if side.get("peft_config") is not None:  # the YAML form (class_path, init_args) or the saved plain fields
            from lit_rlhf.models.adapters import lora_settings

            side["peft_config"] = lora_settings(side["peft_config"])
    refused: list[tuple[str, Any, Any, str]] = []
    applied: list[tuple[str, Any, Any]] = []
    for name, new in configured_plain.items():
        if name.startswith("_") or name in PATH_SETTINGS or name not in saved_plain:
            continue
        old = saved_plain[name]
        if old == new:
            continue
        reason = setting_policy(name, saved_plain, configured_plain)
        if reason is None:
            applied.append((name, old, new))
        else:
            refused.append((name, old, new, reason))
    return refused, applied


def check_settings(saved: Mapping[str, Any], configured: Mapping[str, Any], where: str) -> list[tuple[str, Any, Any]]:
    """:func:`compare_settings`, raising on the first refused change.

    Returns:
        The applied changes ``(name, saved, configured)``.

    Raises:
        CheckpointMismatchError: a change that cannot be made on resume, with the reason and the way out.
    """
    refused, applied = compare_settings(saved, configured)
    if refused:
        name, old, new, reason = refused[0]
        raise CheckpointMismatchError(
            f"{where} was written with model.init_args.{name} {_short(old)}, and this config sets {_short(new)}: it "
            f"cannot change on resume because {reason}; resume with the saved value, or start a new run from the "
            "run's hf/ export without --ckpt_path"
        )
    return applied


def describe_changes(applied: list[tuple[str, Any, Any]]) -> str:
    """One line listing applied changes: ``learning_rate 0.001 -> 0.0005, ppo_epochs 4 -> 2``; of a group of
    settings (a mapping such as ``vllm``), the fields that changed: ``vllm.kv_cache_gib 0.5 -> 0.25``."""
    parts = []
    for name, old, new in applied:
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            parts += [
                f"{name}.{key} {_short(old.get(key))} -> {_short(new.get(key))}"
                for key in sorted(set(old) | set(new), key=str)
                if old.get(key) != new.get(key)
            ]
        else:
            parts.append(f"{name} {_short(old)} -> {_short(new)}")
    return ", ".join(parts)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    """``{"size", "sha256"}``: the number of tokens and a hash of the vocabulary (token -> id) and special ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    special = {"pad": tokenizer.pad_token_id, "eos": tokenizer.eos_token_id, "bos": tokenizer.bos_token_id}
    digest = hashlib.sha256(json.dumps([vocab, special], ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"size": len(tokenizer), "sha256": digest}


def check_tokenizer(meta: Mapping[str, Any], fingerprint: Mapping[str, Any], where: str) -> None:
    """Refuse a checkpoint whose recorded tokenizer differs from the run's (``fingerprint``)."""
    saved = meta.get("tokenizer")
    if not saved or saved.get("sha256") == fingerprint.get("sha256"):
        return
    raise CheckpointMismatchError(
        f"{where} was trained with another tokenizer ({saved.get('size')} tokens, vocabulary hash "
        f"{str(saved.get('sha256'))[:12]}) than this config's ({fingerprint.get('size')} tokens, "
        f"{str(fingerprint.get('sha256'))[:12]}): the saved weights index that vocabulary; point the model and "
        "tokenizer paths at the ones the run was trained with"
    )


def check_state_shapes(saved: Mapping[str, Any], own: Mapping[str, Any], where: str, strict: bool = True) -> None:
    """Refuse saved weights of another architecture than the module's (before ``load_state_dict`` fails on them).

    Args:
        saved: ``checkpoint["state_dict"]``.
        own: the module's ``state_dict()``.
        where: the checkpoint, as named in the error.
        strict: also refuse tensors present on one side only (as strict loading would).
    """
    for key, value in own.items():
        if key in saved and hasattr(value, "shape") and tuple(saved[key].shape) != tuple(value.shape):
            raise CheckpointMismatchError(
                f"{where} holds {key} of shape {tuple(saved[key].shape)}, but this config's model has "
                f"{tuple(value.shape)}: it was trained with another architecture (model_config or model folder); "
                "resume with the config of the run that wrote it"
            )
    if strict:
        missing = [k for k in own if k not in saved]
        unexpected = [k for k in saved if k not in own]
        if missing or unexpected:
            example = f"{len(missing)} missing, e.g. {missing[0]}" if missing else f"{len(unexpected)} extra, e.g. "
            example += "" if missing else unexpected[0]
            raise CheckpointMismatchError(
                f"{where} holds other tensors than this config's model ({example}): it was trained with another "
                "architecture (model_config or model folder); resume with the config of the run that wrote it"
            )


def check_adapter_state(meta: Mapping[str, Any], saved: Mapping[str, Any] | None, frozen: set[str], where: str) -> None:
    """Refuse, for a run with LoRA adapters, a checkpoint written without them (it holds the full weights).

    Args:
        meta: the checkpoint's lit_rlhf entry.
        saved: ``checkpoint["state_dict"]`` (absent under FSDP2, whose strategy loads the weights itself).
        frozen: the state-dict keys of the run's frozen base weights.
        where: the checkpoint, as named in the error.
    """
    full = meta.get("adapters") is not True and (saved is None or any(key in frozen for key in saved))
    if full:
        raise CheckpointMismatchError(
            f"{where} was trained without LoRA adapters (it holds the full weights), and this config adds them "
            "(model.init_args.peft_config): resume without peft_config, or start a new LoRA run from the run's hf/ "
            "export without --ckpt_path"
        )


def check_base_fingerprints(meta: Mapping[str, Any], fingerprints: list[str], where: str) -> None:
    """Refuse adapters trained on other frozen base weights than the run's (its models' sources changed since).

    Args:
        meta: the checkpoint's lit_rlhf entry (``base_fingerprints``: one hash per adapted model).
        fingerprints: the run's hashes (:func:`~lit_rlhf.models.adapters.frozen_weights_fingerprint`), same order.
        where: the checkpoint, as named in the error.
    """
    saved = meta.get("base_fingerprints")
    if saved is None or list(saved) == list(fingerprints):
        return
    raise CheckpointMismatchError(
        f"{where} holds LoRA adapters trained on other base weights than the ones this config loads (weights hash "
        f"{', '.join(saved)} then, {', '.join(fingerprints)} now): the adapters only fit the base they were trained "
        "on; point the model paths at the folders the run started from, unchanged (and keep seed_everything for the "
        "built-in model)"
    )


def learning_rate_names(hparams: Mapping[str, Any]) -> list[str]:
    """The learning-rate setting of each optimizer, in ``configure_optimizers`` order (PPO: actor, then critic)."""
    if "actor_learning_rate" in hparams and "critic_learning_rate" in hparams:
        return ["actor_learning_rate", "critic_learning_rate"]
    return ["learning_rate"] if "learning_rate" in hparams else []


def apply_optimizer_settings(
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any] | None,
    *,
    learning_rate: float,
    weight_decay: float,
    betas: tuple[float, float],
    flags: Mapping[str, Any],
    schedule_factor: float | None,
) -> None:
    """Put the configured settings into a saved AdamW state (and its LambdaLR's), in place, before it is restored.

    The moments and step counts are kept; the learning rate, weight decay, betas and implementation flags become
    the configured ones, so that the restored optimizer really uses them. The state is that of
    ``RLHFModule.build_optimizer``: a decay group first, then a group without weight decay.

    Args:
        optimizer_state: one entry of ``checkpoint["optimizer_states"]``.
        scheduler_state: its entry of ``checkpoint["lr_schedulers"]`` (``None``: none).
        learning_rate: the configured base learning rate.
        weight_decay: the configured weight decay of the decay group.
        betas: the configured AdamW betas.
        flags: the configured ``foreach`` / ``fused`` arguments (:func:`lit_rlhf.modules.base.adamw_flags`).
        schedule_factor: the schedule's factor at the restored step under the configured schedule; ``None`` keeps
            the saved ratio of the current to the base learning rate.
    """
    groups = optimizer_state["param_groups"]
    for index, group in enumerate(groups):
        base = group.get("initial_lr") or 0.0
        factor = schedule_factor if schedule_factor is not None else (group["lr"] / base if base else 1.0)
        group["initial_lr"] = learning_rate
        group["lr"] = learning_rate * factor
        group["betas"] = tuple(betas)
        if index == 0 or len(groups) == 1:
            group["weight_decay"] = weight_decay
        for key in ("foreach", "fused"):
            group[key] = flags.get(key)
    if scheduler_state is not None:
        scheduler_state["base_lrs"] = [learning_rate for _ in groups]
        scheduler_state["_last_lr"] = [group["lr"] for group in groups]


def run_settings(trainer: Any) -> dict[str, Any]:
    """The run settings an exact resume depends on (:data:`RUN_SHAPE_REASONS`), read from a ``Trainer``."""
    datamodule = getattr(trainer, "datamodule", None)
    return {
        "world_size": trainer.world_size,
        "batch_size": getattr(datamodule, "batch_size", None),
        "data_seed": getattr(datamodule, "seed", None),
        "accumulate_grad_batches": getattr(trainer, "accumulate_grad_batches", None),
    }


def apply_configured_settings(
    checkpoint: dict[str, Any],
    hparams: Mapping[str, Any],
    max_steps: int,
    flags: Mapping[str, Any],
    restored_optimizers: list[torch.optim.Optimizer] | None = None,
) -> None:
    """Make the training state of ``checkpoint`` follow the configured settings ``hparams``, in place.

    - Each optimizer saved by ``RLHFModule.build_optimizer`` gets the configured learning rate (of its own
      :func:`learning_rate_names` entry), weight decay, betas and implementation ``flags``; with ``max_steps > 0`` its
      current learning rate is the configured schedule's at the restored step (the schedule spans ``max_steps``).
    - A fixed KL coefficient (``kl_coef`` without ``adaptive_kl_target``) is the configured one, and so is the start of
      an adaptive controller that the saved run did not have; an adaptive controller that it had goes on from its
      restored coefficient.

    Checkpoints whose optimizers have another layout (a ``configure_optimizers`` of one's own) are left as saved.

    Args:
        checkpoint: the loaded checkpoint, before Lightning restores its optimizers and schedulers.
        hparams: the run's module settings.
        max_steps: ``trainer.max_steps`` (the span of the schedule; ``<= 0``: keep the saved schedule position).
        flags: the configured ``foreach`` / ``fused`` arguments (:func:`lit_rlhf.modules.base.adamw_flags`).
        restored_optimizers: the run's optimizers when the strategy has already loaded the saved states into them
            (FSDP2: ``ModelParallelStrategy`` restores them from the shards, so ``checkpoint`` holds no
            ``optimizer_states``); their param groups are changed in place instead of the saved states.
    """
    from lit_rlhf.functional.schedules import warmup_decay_factor

    names = learning_rate_names(hparams)
    if restored_optimizers is not None:
        optimizers = [{"param_groups": optimizer.param_groups} for optimizer in restored_optimizers]
    else:
        optimizers = checkpoint.get("optimizer_states") or []
    schedulers = checkpoint.get("lr_schedulers") or []
    layout_known = (
        names
        and len(optimizers) == len(names)
        and len(schedulers) in (0, len(names))
        and all(_adamw_layout(o.get("param_groups", [])) for o in optimizers)
        and all(k in hparams for k in ("weight_decay", "betas", "warmup_steps", "lr_schedule", "min_lr_ratio"))
    )
    if layout_known:
        for index, (name, optimizer_state) in enumerate(zip(names, optimizers)):
            scheduler_state = schedulers[index] if schedulers else None
            factor = None
            if max_steps > 0 and scheduler_state is not None and "last_epoch" in scheduler_state:
                factor = warmup_decay_factor(
                    int(scheduler_state["last_epoch"]),
                    hparams["warmup_steps"],
                    max_steps,
                    hparams["lr_schedule"],
                    hparams["min_lr_ratio"],
                )
            apply_optimizer_settings(
                optimizer_state,
                scheduler_state,
                learning_rate=float(hparams[name]),
                weight_decay=float(hparams["weight_decay"]),
                betas=tuple(hparams["betas"]),
                flags=flags,
                schedule_factor=factor,
            )
    online = (checkpoint.get(CHECKPOINT_KEY) or {}).get("online") or {}
    saved = checkpoint.get("hyper_parameters") or {}
    adaptive_before = saved.get("adaptive_kl_target") is not None
    if "kl_coef" in hparams and isinstance(online.get("kl"), dict):
        if hparams.get("adaptive_kl_target") is None or not adaptive_before:  # a fixed one, or an adaptive one's start
            online["kl"]["value"] = float(hparams["kl_coef"])


def relocate_checkpoint_callbacks(checkpoint: dict[str, Any], dirpaths: Mapping[str, str]) -> list[str]:
    """Point the saved state of each ``ModelCheckpoint`` at its folder in this run, in place, when it moved.

    Lightning restores a ``ModelCheckpoint``'s kept checkpoints (``best_k_models``, ``last_model_path``) only when
    its folder is the saved one; for a moved or copied run folder it starts afresh, so it writes ``last-v1.ckpt``
    beside the ``last.ckpt`` it does not know (and ``--ckpt_path .../last.ckpt`` would resume from the older one
    next time) and never removes the checkpoints it kept before. Here each saved path under the saved folder becomes
    the same path under the current one, if it exists there (a path that does not is dropped from the state).

    Args:
        checkpoint: the loaded checkpoint, before Lightning restores its callbacks.
        dirpaths: each ``ModelCheckpoint``'s ``state_key`` -> its folder in this run.

    Returns:
        The state keys whose folder was relocated.
    """
    relocated = []
    for key, state in (checkpoint.get("callbacks") or {}).items():
        new = dirpaths.get(key)
        old = state.get("dirpath") if isinstance(state, dict) else None
        if not new or not old or os.path.normpath(str(old)) == os.path.normpath(str(new)):
            continue
        state["dirpath"] = new
        for name in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if name in state:
                state[name] = _moved_path(state[name], str(old), str(new))
        if isinstance(state.get("best_k_models"), dict):
            moved = {_moved_path(path, str(old), str(new)): score for path, score in state["best_k_models"].items()}
            state["best_k_models"] = {path: score for path, score in moved.items() if path}
        relocated.append(key)
    return relocated


def _moved_path(path: Any, old: str, new: str) -> str:
    """``path`` (under the folder ``old``) under the folder ``new`` if it exists there, else ``""``."""
    if not path:
        return ""
    relative = os.path.relpath(os.path.abspath(str(path)), os.path.abspath(old))
    if relative == os.curdir or relative.startswith(os.pardir):
        return ""
    moved = os.path.join(new, relative)
    return moved if os.path.exists(moved) else ""


def _adamw_layout(groups: list[dict[str, Any]]) -> bool:
    """Whether saved param groups look like ``RLHFModule.build_optimizer``'s: one or two AdamW groups, scheduled."""
    return 1 <= len(groups) <= 2 and all("initial_lr" in g and "betas" in g for g in groups)
