"""The ``--engine`` options of ``lit-rlhf evaluate`` and ``lit-rlhf winrate`` (no heavy import: ``--help`` stays fast).

``--engine generate`` answers with Hugging Face ``generate`` on the loaded model; ``--engine vllm`` with a vLLM
engine on the model folder (:mod:`lit_rlhf.evaluation.engine`).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from lit_rlhf.engines.settings import SAMPLING_ENGINES, VLLMSettings, require_vllm
from lit_rlhf.errors import ConfigError

__all__ = ["add_engine_options", "engine_settings"]


def add_engine_options(parser: Any) -> None:
    """``--engine {generate,vllm}`` and the vLLM engine's memory options, on a :class:`~lit_rlhf.cli.CommandParser`."""
    parser.add_option(
        "--engine",
        choices=list(SAMPLING_ENGINES),
        default="generate",
        help="what answers the prompts: generate (Hugging Face generate on the loaded model) or vllm (a vLLM engine "
        "on the model folder, in this process; needs vLLM installed) (default: %(default)s)",
    )
    parser.add_option(
        "--vllm_gpu_memory_utilization",
        "--vllm-gpu-memory-utilization",
        type=float,
        default=None,
        metavar="SHARE",
        help="with --engine vllm on a GPU: the share of its memory the engine may take, in (0, 1] "
        f"(default: {VLLMSettings.gpu_memory_utilization})",
    )
    parser.add_option(
        "--vllm_kv_cache_gib",
        "--vllm-kv-cache-gib",
        type=float,
        default=None,
        metavar="GIB",
        help="with --engine vllm: the engine's KV cache, in GiB (default: 1 on the CPU, from "
        "--vllm_gpu_memory_utilization on a GPU)",
    )


def engine_settings(args: argparse.Namespace, dtype: str | None = None) -> VLLMSettings | None:
    """The vLLM engine's settings from the parsed options (``None`` with ``--engine generate``).

    Call it before any model loads: without vLLM installed, ``--engine vllm`` fails here.

    Args:
        args: parsed options with ``engine``, ``vllm_gpu_memory_utilization`` and ``vllm_kv_cache_gib``.
        dtype: the engine's weight dtype; ``None``: the model folder's.

    Raises:
        ConfigError: vLLM is not installed (naming the install command), a ``--vllm_*`` option without
            ``--engine vllm``, or one out of range.
    """
    given = [
        (option, value)
        for option, value in (
            ("--vllm_gpu_memory_utilization", args.vllm_gpu_memory_utilization),
            ("--vllm_kv_cache_gib", args.vllm_kv_cache_gib),
        )
        if value is not None
    ]
    if args.engine != "vllm":
        if given:
            raise ConfigError(f"{given[0][0]} applies to --engine vllm only; add --engine vllm or drop it")
        return None
    require_vllm("--engine")
    settings = VLLMSettings(dtype=dtype)
    utilization = args.vllm_gpu_memory_utilization
    if utilization is not None:
        if not (math.isfinite(utilization) and 0 < utilization <= 1):
            raise ConfigError(f"--vllm_gpu_memory_utilization must be in (0, 1], got {utilization}")
        settings.gpu_memory_utilization = utilization
    if args.vllm_kv_cache_gib is not None:
        if not (math.isfinite(args.vllm_kv_cache_gib) and args.vllm_kv_cache_gib > 0):
            raise ConfigError(f"--vllm_kv_cache_gib must be > 0, got {args.vllm_kv_cache_gib}")
        settings.kv_cache_gib = args.vllm_kv_cache_gib
    return settings
