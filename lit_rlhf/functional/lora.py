"""LoRA weights merged into their base weights, from a state dict (no module needed: works on gathered shards)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

BASE_PREFIX = "base_model.model."
"""What ``peft``'s ``PeftModel`` puts before the wrapped model's own state-dict keys."""


def lora_delta(
    lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float, fan_in_fan_out: bool = False
) -> torch.Tensor:
    """The weight update of one LoRA pair: ``scaling * B @ A``.

    Args:
        lora_a: ``(r, in_features)``.
        lora_b: ``(out_features, r)``.
        scaling: ``lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rank-stabilised LoRA).
        fan_in_fan_out: the base weight is stored ``(in_features, out_features)`` (GPT-2's ``Conv1D``): the update is
            transposed to match.

    Returns:
        ``(out_features, in_features)``, or its transpose with ``fan_in_fan_out``, in float32 or wider.
    """
    delta = (lora_b.float() @ lora_a.float()) * scaling
    return delta.T if fan_in_fan_out else delta


def merge_lora_state_dict(
    state: Mapping[str, torch.Tensor],
    scalings: Mapping[str, float],
    adapter: str = "default",
    fan_in_fan_out: bool | Mapping[str, bool] = False,
) -> dict[str, torch.Tensor]:
    """The plain model's state dict from an adapted one's (LoRA layers in place, or a ``PeftModel``'s), with each
    LoRA update added to its base weight.

    ``<m>.base_layer.weight`` + ``scaling * <m>.lora_B.<adapter>.weight @ <m>.lora_A.<adapter>.weight`` becomes
    ``<m>.weight`` (in the base weight's dtype); ``<m>.base_layer.bias`` becomes ``<m>.bias``; a fully trained copy
    (``<m>.modules_to_save.<adapter>.*``) replaces the frozen original (``<m>.original_module.*``); the
    ``base_model.model.`` prefix is removed. Other keys pass through.

    Args:
        state: the adapted model's state dict (full tensors).
        scalings: ``{module name as in state without the prefix: scaling}`` for each LoRA module, e.g.
            ``{"model.layers.0.self_attn.q_proj": 2.0}``.
        adapter: the adapter's name.
        fan_in_fan_out: base weights are stored transposed (see :func:`lora_delta`): for every module, or
            ``{module name: flag}`` per module (missing names: ``False``).

    Returns:
        A state dict that ``from_pretrained`` of the base architecture loads.

    Raises:
        KeyError: a LoRA module named in ``scalings`` without its A, B or base weight in ``state``.
    """
    plain = {key[len(BASE_PREFIX) :] if key.startswith(BASE_PREFIX) else key: value for key, value in state.items()}
    merged: dict[str, torch.Tensor] = {}
    lora_keys: set[str] = set()
    for module, scaling in scalings.items():
        base = plain[f"{module}.base_layer.weight"]
        a = plain[f"{module}.lora_A.{adapter}.weight"]
        b = plain[f"{module}.lora_B.{adapter}.weight"]
        transposed = fan_in_fan_out.get(module, False) if isinstance(fan_in_fan_out, Mapping) else fan_in_fan_out
        merged[f"{module}.weight"] = (base.float() + lora_delta(a, b, scaling, transposed)).to(base.dtype)
        lora_keys.update({f"{module}.base_layer.weight", f"{module}.lora_A.{adapter}.weight"})
        lora_keys.add(f"{module}.lora_B.{adapter}.weight")
    for key, value in plain.items():
        if key in lora_keys or ".lora_" in key or ".original_module." in key:
            continue
        if ".base_layer." in key:
            merged[key.replace(".base_layer.", ".")] = value
        elif f".modules_to_save.{adapter}." in key:
            merged[key.replace(f".modules_to_save.{adapter}.", ".")] = value
        else:
            merged[key] = value
    return merged
