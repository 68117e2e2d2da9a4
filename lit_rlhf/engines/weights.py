"""The policy's weights as a sampling engine loads them: whole tensors under the plain model's names, one at a time."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lit_rlhf.functional.lora import merge_lora_state_dict
from lit_rlhf.models.adapters import ADAPTER, lora_fan_in_fan_out, lora_scalings
from lit_rlhf.sharding import full_tensor


def _lora_module(key: str, lora_modules: set[str]) -> str | None:
    """The LoRA layer a state-dict key belongs to (``<m>.base_layer.*``, ``<m>.lora_A.*``, ...), if any."""
    for marker in (".base_layer.", ".lora_"):
        if marker in key:
            module = key.split(marker, 1)[0]
            if module in lora_modules:
                return module
    return None


@torch.no_grad()
def engine_weights(model: torch.nn.Module, adapter: str = ADAPTER) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor of ``model``'s state dict, as the plain model (no adapters) names it.

    - A model sharded with FSDP2 is gathered one tensor at a time (each ``DTensor``'s ``full_tensor``, a collective:
      every process must iterate to the end, in the same order), so no process holds more than one whole tensor (or
      one LoRA layer's three) beyond its shards.
    - A LoRA layer (adapters injected by ``peft``) is yielded merged: ``W + scaling * B @ A`` under ``<m>.weight``
      (:func:`~lit_rlhf.functional.lora.merge_lora_state_dict`). The model itself is not changed: merging into a
      copy and unmerging afterwards give the same tensors without touching the training weights.

    Args:
        model: the policy (a Hugging Face causal LM, possibly with LoRA layers, possibly sharded).
        adapter: the LoRA adapter to merge.

    Yields:
        Detached whole tensors on the model's device.
    """
    scalings = lora_scalings(model, adapter)
    fan_in_fan_out = lora_fan_in_fan_out(model) if scalings else {}
    state = model.state_dict()
    groups: dict[str, list[str]] = {}
    for key in state:
        module = _lora_module(key, set(scalings))
        groups.setdefault(module if module is not None else key, []).append(key)
    for group, keys in groups.items():
        whole = {key: full_tensor(state[key]).detach() for key in keys}
        merge = {group: scalings[group]} if group in scalings else {}  # other adapters' weights are left out
        yield from merge_lora_state_dict(whole, merge, adapter, fan_in_fan_out).items()
