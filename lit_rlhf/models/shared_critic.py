"""A PPO critic on the policy's own frozen backbone: a second LoRA adapter beside the policy's, and a value head.

With LoRA the policy's base weights are frozen, so a critic can run on them too, with adapters of its own: no
second backbone is loaded. The critic's adapter sits in the policy's LoRA layers under another name
(:data:`CRITIC_ADAPTER`), trained by the critic's optimizer and applied only while the critic computes values
(:func:`~lit_rlhf.models.adapters.active_adapter`); the policy's passes never see it. Its value head is a linear
layer of its own.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification

from lit_rlhf.functional.lora import merge_lora_state_dict
from lit_rlhf.models.adapters import (
    active_adapter,
    apply_adapters,
    lora_fan_in_fan_out,
    lora_scalings,
    save_adapter,
)

CRITIC_ADAPTER = "critic"
"""The name of the critic's adapter in the policy's LoRA layers."""


class AdapterView(torch.nn.Module):
    """``module`` run with adapter ``adapter`` active (the others present but not applied)."""

    def __init__(self, module: torch.nn.Module, adapter: str, adapted: torch.nn.Module) -> None:
        super().__init__()
        self.inner = module
        self.adapter = adapter
        object.__setattr__(self, "_adapted", adapted)  # the model holding the LoRA layers (not a submodule twice)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with active_adapter(self._adapted, self.adapter):
            return self.inner(*args, **kwargs)


class SharedBackboneCritic(torch.nn.Module):
    """A value model made of the policy's transformer body with the critic's adapter, and a linear value head.

    It looks to lit_rlhf's scoring functions like a Hugging Face sequence classifier: ``base_model_prefix`` names
    its body (:attr:`body`) and ``score`` is its head. Only the head is a submodule; the policy (and with it the
    critic's adapter weights) belongs to the LightningModule's ``model``, so nothing is held or saved twice.

    Args:
        policy: the policy, with LoRA adapters already (:func:`~lit_rlhf.models.adapters.apply_adapters`).
        peft_config: the LoRA config of the critic's adapter.
        option: the option's name in messages.
    """

    base_model_prefix = "body"

    def __init__(self, policy: torch.nn.Module, peft_config: Any, option: str) -> None:
        super().__init__()
        object.__setattr__(self, "_policy", policy)
        apply_adapters(policy, peft_config, option, adapter=CRITIC_ADAPTER)
        weight = policy.get_input_embeddings().weight
        self.score = torch.nn.Linear(policy.config.hidden_size, 1, bias=False, dtype=weight.dtype)
        torch.nn.init.zeros_(self.score.weight)  # the critic predicts 0 until it has learned

    @property
    def policy(self) -> torch.nn.Module:
        return self._policy

    @property
    def config(self) -> Any:
        return self._policy.config

    @property
    def body(self) -> AdapterView:
        """The policy's transformer body, run with the critic's adapter."""
        policy = self._policy
        return AdapterView(getattr(policy, policy.base_model_prefix), CRITIC_ADAPTER, policy)

    def adapter_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The critic's adapter weights inside the policy, with their names there."""
        marks = (f".lora_A.{CRITIC_ADAPTER}.", f".lora_B.{CRITIC_ADAPTER}.")
        return [(n, p) for n, p in self._policy.named_parameters() if any(mark in n for mark in marks)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Values at every position ``(batch, seq_len, 1)``."""
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kwargs)
        return self.score(hidden.last_hidden_state)

    def save_pretrained_merged(
        self, path: str, adapter_path: str, state: dict[str, torch.Tensor] | None = None, base: str | None = None
    ) -> None:
        """``path``: the critic as a plain Hugging Face sequence classifier (the policy's body with the critic's
        adapter merged, and the value head); ``adapter_path``: the critic's adapter and head, for ``peft`` on the
        policy's base model loaded as a sequence classifier.

        Args:
            path, adapter_path: the folders.
            state: the policy's full state dict (gathered from shards); default its ``state_dict()``.
            base: where the policy's base model was loaded from.
        """
        policy = self._policy
        state = policy.state_dict() if state is None else state
        merged = merge_lora_state_dict(
            state, lora_scalings(policy, CRITIC_ADAPTER), CRITIC_ADAPTER, lora_fan_in_fan_out(policy)
        )
        prefix = f"{policy.base_model_prefix}."
        config = copy.deepcopy(policy.config)
        config.num_labels = 1
        config.architectures = None
        with torch.device("meta"):
            critic = AutoModelForSequenceClassification.from_config(config)
        critic_state = {k: v for k, v in merged.items() if k.startswith(prefix)}
        critic_state["score.weight"] = self.score.weight.detach()
        critic.load_state_dict(critic_state, strict=True, assign=True)
        os.makedirs(path, exist_ok=True)
        critic.save_pretrained(path)
        save_adapter(policy, adapter_path, state, base, CRITIC_ADAPTER, heads={"score.weight": self.score.weight})
