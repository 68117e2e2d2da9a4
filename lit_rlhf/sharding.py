"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for Hugging Face models: shard, gather, and read sharded tensors.

Each process keeps ``1 / world_size`` of every parameter (and so of its gradient and optimizer state); a forward
gathers one decoder block at a time and frees it again afterwards. What lit_rlhf needs beyond ``fully_shard``:

- models whose body and head are called separately (a reward model's backbone, then its ``score`` head) get the body
  and the head as units of their own (:func:`shard_model`), so that each call gathers what it uses;
- sampling can gather the whole policy once per rollout instead of once per generated token
  (:func:`gathered_for_sampling`);
- the Hugging Face export gathers the full weights on rank 0 only (:func:`full_state_dict`);
- checks on gradients read each process's own shard (:func:`local_tensor`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` (or any module inside it) is sharded with ``fully_shard``."""
    return any(isinstance(module, FSDPModule) for module in model.modules())


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face model (the classes its ``_no_split_modules`` names, e.g.
    ``LlamaDecoderLayer``), in order; empty for a model that names none."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [module for module in model.modules() if type(module).__name__ in names]


def mixed_precision_policy(param_dtype: torch.dtype | None) -> MixedPrecisionPolicy:
    """FSDP2's mixed precision: compute in ``param_dtype`` (e.g. bf16) while the sharded weights, their gradients
    and the optimizer states stay in float32, and gradients are reduced across processes in float32. ``None``
    computes in the weights' own dtype."""
    if param_dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)


def shard_model(
    model: torch.nn.Module,
    mesh: Any,
    mp_policy: MixedPrecisionPolicy | None = None,
    reshard_after_forward: bool = True,
) -> torch.nn.Module:
    """Shard ``model`` in place over the data-parallel ``mesh``: each decoder block, then (for a model whose body
    and head are called on their own, a sequence-classification ``score`` head) the body and the head, then the
    root with what is left (embeddings, final norm, a tied LM head). Does nothing to a model already sharded.

    Args:
        model: a Hugging Face ``PreTrainedModel`` (causal LM or sequence classification).
        mesh: a 1-D ``DeviceMesh`` over the data-parallel processes.
        mp_policy: FSDP2 mixed precision (:func:`mixed_precision_policy`); ``None``: the weights' own dtype.
        reshard_after_forward: free each block's gathered weights after its forward (a trained model gathers them
            again for backward); ``False`` keeps them until the backward, trading memory for one all-gather.

    Returns:
        ``model``, now an ``FSDPModule``: parameters are ``DTensor`` shards, forward and backward gather and
        reduce them, gradients come out averaged over the processes.
    """
    if is_sharded(model):
        return model
    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    kwargs["reshard_after_forward"] = reshard_after_forward
    for block in decoder_blocks(model):
        fully_shard(block, **kwargs)
    head = getattr(model, "score", None)
    body = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if isinstance(head, torch.nn.Module) and isinstance(body, torch.nn.Module) and body is not model:
        fully_shard(body, **kwargs)
        fully_shard(head, **kwargs)
    fully_shard(model, **kwargs)
    return model


@contextlib.contextmanager
def gathered_for_sampling(model: torch.nn.Module, enabled: bool = True) -> Iterator[None]:
    """Keep each block's gathered weights after its first forward until the block exits: a generation loop then
    gathers the whole model once (in its first step) instead of once per generated token, at the cost of holding the
    full weights on every process while it samples. The weights are sharded again at exit. Does nothing for a model
    that is not sharded or with ``enabled=False``.
    """
    units = [module for module in model.modules() if isinstance(module, FSDPModule)] if enabled else []
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def local_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a ``DTensor``; any other tensor as it is."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a ``DTensor`` shard (a collective: every process must call it); any other tensor
    as it is."""
    gather = getattr(tensor, "full_tensor", None)
    return gather() if callable(gather) else tensor


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full weights of a sharded ``model`` on rank 0, on the CPU (an empty dict on the other ranks), gathered
    one tensor at a time so that no process holds more than one full tensor on its device. A collective: every
    process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # A parameter shared by two modules (a tied LM head) is gathered into one copy per name: keep one tensor under
    # both names, so that ``save_pretrained`` writes it once, as it does for the model that is not sharded.
    first_name: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first = first_name.setdefault(id(param), name)
        if first != name and first in state and name in state:
            state[name] = state[first]
    return state


def sharded_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Bytes this process holds for ``model``'s parameters, their gradients and ``optimizer``'s states (its own
    shards under FSDP2; whole tensors otherwise).

    Returns:
        ``{"parameters": ..., "gradients": ..., "optimizer_states": ...}``.
    """

    def size(tensor: torch.Tensor) -> int:
        local = local_tensor(tensor)
        return local.numel() * local.element_size()

    params = list(model.parameters())
    states = 0
    if optimizer is not None:
        for param in params:
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, torch.Tensor):
                    states += size(value)
    return {
        "parameters": sum(size(p) for p in params),
        "gradients": sum(size(p.grad) for p in params if p.grad is not None),
        "optimizer_states": states,
    }
