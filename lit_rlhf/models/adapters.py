"""LoRA adapters (``peft``) on a Hugging Face model: add them, run the model without them, export merged or alone.

With adapters the base weights are frozen and only the adapters (and the heads named in ``modules_to_save``, e.g. a
reward model's ``score``) train, so a module's checkpoints hold those alone, and the policy with its adapters
disabled is the frozen reference of PPO and GRPO: no second copy of the model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.lora import merge_lora_state_dict

ADAPTER = "default"
"""The name ``peft`` gives the one adapter lit_rlhf adds."""


def is_adapted(model: Any) -> bool:
    """Whether ``model`` is a ``peft`` ``PeftModel``."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def _import_peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ConfigError("peft_config needs the peft package: pip install peft") from err
    return peft


def apply_adapters(
    model: torch.nn.Module, peft_config: Any, option: str, trained_heads: tuple[str, ...] = ()
) -> torch.nn.Module:
    """``model`` with LoRA adapters from ``peft_config``: its own weights frozen, the adapters and ``trained_heads``
    trainable.

    Args:
        model: a Hugging Face model (causal LM or sequence classification).
        peft_config: a ``peft.LoraConfig``.
        option: the option's name in messages (``model.init_args.peft_config``).
        trained_heads: modules trained in full beside the adapters (``("score",)``: a reward model's or a critic's
            head), added to the config's ``modules_to_save``.

    Returns:
        The ``peft.PeftModel``.

    Raises:
        ConfigError: not a ``LoraConfig``; DoRA or 4-bit base weights where they cannot run; ``target_modules`` that
            match nothing; adapters on layers other than linear ones; a model type ``peft`` does not support.
    """
    peft = _import_peft()
    if not isinstance(peft_config, peft.LoraConfig):
        raise ConfigError(
            f"{option} must be a peft.LoraConfig (class_path: peft.LoraConfig), got {type(peft_config).__name__}"
        )
    if peft_config.use_dora:
        raise ConfigError(f"{option}.use_dora is not supported: lit_rlhf merges plain LoRA updates; set it to false")
    heads = [h for h in trained_heads if h not in (peft_config.modules_to_save or [])]
    if heads:
        peft_config = _replaced(peft_config, modules_to_save=[*(peft_config.modules_to_save or []), *heads])
    try:
        adapted = peft.get_peft_model(model, peft_config)
    except ValueError as err:  # NoMatchingPeftModuleError, unsupported layer or model types
        message = " ".join(str(err).split())
        raise ConfigError(
            f"{option}: peft could not add adapters to {type(model).__name__}: {message} (target_modules names "
            "the model's linear layers, e.g. [q_proj, v_proj], or all-linear)"
        ) from err
    other = sorted(
        {type(m).__name__ for m in adapted.modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
        - {"Linear"}
    )
    if other:
        raise ConfigError(
            f"{option}: LoRA on {', '.join(other)} layers is not supported (lit_rlhf merges adapters of linear layers "
            "only); restrict target_modules to linear layers"
        )
    return adapted


def _replaced(config: Any, **changes: Any) -> Any:
    """A copy of a ``peft`` config dataclass with ``changes``."""
    import copy

    config = copy.copy(config)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def lora_scalings(model: torch.nn.Module, adapter: str = ADAPTER) -> dict[str, float]:
    """``{module name without peft's prefix: scaling}`` of every LoRA layer of ``model`` (a ``PeftModel``)."""
    from peft.tuners.lora import LoraLayer

    from lit_rlhf.functional.lora import BASE_PREFIX

    scalings = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.scaling:
            key = name[len(BASE_PREFIX) :] if name.startswith(BASE_PREFIX) else name
            scalings[key] = float(module.scaling[adapter])
    return scalings


def merged_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The base architecture's state dict with the adapters merged in (:func:`merge_lora_state_dict`).

    Args:
        model: the ``PeftModel``.
        state: its full state dict when the caller has it (gathered from shards); default ``model.state_dict()``.
    """
    config = model.peft_config[ADAPTER]
    state = model.state_dict() if state is None else state
    return merge_lora_state_dict(state, lora_scalings(model), ADAPTER, bool(config.fan_in_fan_out))


def adapter_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """The adapter's weights as ``peft`` saves them (``adapter_model.safetensors``)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, state_dict=state, adapter_name=ADAPTER)


def save_merged_and_adapter(
    model: torch.nn.Module, path: str, adapter_path: str, state: dict[str, torch.Tensor] | None = None
) -> None:
    """``path``: the merged model (``save_pretrained`` of the base architecture); ``adapter_path``: the adapter alone
    (``PeftModel.from_pretrained(base, adapter_path)`` loads it onto the base model)."""
    state = model.state_dict() if state is None else state
    base = model.get_base_model()
    os.makedirs(path, exist_ok=True)
    base.save_pretrained(path, state_dict=merged_state_dict(model, state))
    os.makedirs(adapter_path, exist_ok=True)
    model.save_pretrained(adapter_path, state_dict=state)  # peft keeps the adapter's own keys of it


class AdaptersDisabled(torch.nn.Module):
    """A ``PeftModel`` seen with its adapters off and in eval mode: the frozen model it started from.

    Calls (``forward``, ``generate``) run the wrapped model inside ``disable_adapter()``; nothing is copied. Kept
    outside the LightningModule's state, like a loaded reference.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.adapted = model

    @property
    def config(self) -> Any:
        return self.adapted.config

    @contextlib.contextmanager
    def _off(self) -> Iterator[None]:
        was_training = self.adapted.training
        self.adapted.eval()
        try:
            with self.adapted.disable_adapter():
                yield
        finally:
            self.adapted.train(was_training)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> Any:
        with self._off():
            return self.adapted(
                input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep, **kwargs
            )

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._off():
            return self.adapted.generate(*args, **kwargs)

    def train(self, mode: bool = True) -> AdaptersDisabled:
        return self  # always evaluated as the frozen base: the policy's mode is its own

    def requires_grad_(self, requires_grad: bool = True) -> AdaptersDisabled:
        return self  # the base weights are frozen already; the adapters belong to the policy
