"""A vLLM engine inside the training process: built from the policy's config, fed its weights, sampling token ids.

The engine runs in the calling process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the policy's tensors reach it
without copies between processes, with tensor parallelism 1: under DDP or FSDP2 each process holds its own engine
and samples its own prompts (vLLM's ``external_launcher`` backend, on the process group the training already runs).
It reads and writes token ids only (no tokenizer of its own) and never changes the random state of the process.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lit_rlhf.engines.settings import VLLMSettings, require_vllm
from lit_rlhf.errors import ConfigError
from lit_rlhf.generation import Generation, check_sampling

CPU_KV_CACHE_GIB = 1.0
"""KV cache of the CPU engine when ``kv_cache_gib`` is not set (vLLM would otherwise take most of the RAM)."""


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore Python's, NumPy's and torch's (CPU and CUDA) random states on exit: building the engine seeds them,
    and a resumed run must draw the same numbers as the uninterrupted one."""
    python, numpy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class _NoTokenizerFilter(logging.Filter):
    """Drops vLLM's notes that it has no tokenizer (by design: token ids in and out, stop at the EOS id given)."""

    NOTES = ("chat template warmup failed", "because tokenizer is not initialized")

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg).lower()
        return not any(note in message for note in self.NOTES)


def _import_vllm() -> Any:
    """``vllm``, with the engine in this process; a :class:`ConfigError` naming the install command without it."""
    require_vllm()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in this process: weights pass by reference
    import vllm

    # Without a tokenizer vLLM's chat-template warm-up logs a traceback it survives, and each request a note that
    # it has no BOS or EOS id. A filter, not a level: vLLM reconfigures its loggers' levels when an engine starts.
    renderer_logger = logging.getLogger("vllm.renderers.base")
    if not any(isinstance(f, _NoTokenizerFilter) for f in renderer_logger.filters):
        renderer_logger.addFilter(_NoTokenizerFilter())
    return vllm


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VLLMEngine:
    """A colocated vLLM engine that samples like :func:`~lit_rlhf.generation.generate`.

    Build it with :meth:`for_policy` (training: the policy's architecture with placeholder weights, then
    :meth:`load_weights` before every rollout) or :meth:`from_pretrained` (evaluation: a saved model folder).
    """

    def __init__(
        self,
        model_dir: str,
        settings: VLLMSettings | None = None,
        *,
        dtype: str,
        max_model_len: int | None,
        load_format: str = "auto",
        temporary: tempfile.TemporaryDirectory | None = None,
    ) -> None:
        """Build the engine on ``model_dir`` (use :meth:`for_policy` or :meth:`from_pretrained`).

        Args:
            model_dir: a folder with the model's ``config.json`` (and its weights unless ``load_format`` is
                ``dummy``).
            settings: the engine's settings (default :class:`VLLMSettings`).
            dtype: the engine's weight dtype (``float32``, ``bfloat16``, ...).
            max_model_len: longest prompt plus response.
            load_format: ``auto`` reads the folder's weights; ``dummy`` allocates placeholders.
            temporary: a folder deleted when the engine closes.

        Raises:
            ConfigError: vLLM is not installed, or a setting this machine cannot run (sleep on the CPU).
        """
        vllm = _import_vllm()
        self.settings = settings or VLLMSettings()
        self.on_cuda = torch.cuda.is_available()
        self.sleeps = self.on_cuda if self.settings.sleep is None else self.settings.sleep
        if self.sleeps and not self.on_cuda:
            raise ConfigError(
                "model.init_args.vllm.sleep true needs a CUDA GPU (the CPU engine cannot free and restore its memory); "
                "set it false or null"
            )
        kv_gib = self.settings.kv_cache_gib
        if kv_gib is None and not self.on_cuda:
            kv_gib = CPU_KV_CACHE_GIB
        eager = (not self.on_cuda) if self.settings.enforce_eager is None else self.settings.enforce_eager
        kwargs: dict[str, Any] = {
            "model": model_dir,
            "skip_tokenizer_init": True,  # token ids in and out; the training tokenizer decodes
            "dtype": dtype,
            "max_model_len": max_model_len,
            "enforce_eager": eager,
            "load_format": load_format,
            "gpu_memory_utilization": self.settings.gpu_memory_utilization,
            "max_num_seqs": self.settings.max_num_seqs,
            "enable_prefix_caching": True,
            "enable_sleep_mode": self.sleeps,
            "generation_config": "vllm",  # sampling settings are ours, not the model folder's generation_config.json
            "logprobs_mode": "processed_logprobs",  # the sampled distribution's: after temperature, top-k, top-p
            "seed": 0,
        }
        if kv_gib is not None:
            kwargs["kv_cache_memory_bytes"] = int(kv_gib * 2**30)
        if not self.on_cuda:
            # A prompt prefilled in chunks has the sample of its unfinished chunk dropped, and vLLM then winds its
            # seeded generator back, which a CPU generator cannot do: prompts are prefilled whole on the CPU.
            kwargs["enable_chunked_prefill"] = False
        self.made_process_group = not (dist.is_available() and dist.is_initialized())
        if _distributed():
            # One engine per training process (tensor parallel 1) on the training's process group.
            kwargs["distributed_executor_backend"] = "external_launcher"
            kwargs["data_parallel_size"] = 1
            os.environ.setdefault("RANK", str(dist.get_rank()))
            os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
            os.environ.setdefault("LOCAL_RANK", str(dist.get_rank()))  # launchers set it; one machine otherwise
        threads = torch.get_num_threads()
        with preserved_rng():
            self.llm = vllm.LLM(**kwargs)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)  # vLLM lowers it for serving; the training keeps its own
        self._vllm = vllm
        self._temporary = temporary
        self.asleep = False
        self.max_model_len = max_model_len

    @classmethod
    def for_policy(
        cls,
        model: torch.nn.Module,
        settings: VLLMSettings | None = None,
        weights: Iterable[tuple[str, torch.Tensor]] | None = None,
    ) -> VLLMEngine:
        """An engine of ``model``'s architecture, holding ``weights`` (default: none yet, placeholders).

        Args:
            model: the policy (a Hugging Face causal LM; its ``config`` defines the engine's model).
            settings: the engine's settings; ``dtype`` null takes the policy's.
            weights: ``(name, tensor)`` pairs to load right away (:func:`~lit_rlhf.engines.weights.engine_weights`).
        """
        settings = settings or VLLMSettings()
        temporary = tempfile.TemporaryDirectory(prefix="lit_rlhf_vllm_")
        model.config.save_pretrained(temporary.name)
        dtype = settings.dtype or str(next(model.parameters()).dtype).removeprefix("torch.")
        max_len = settings.max_model_len or getattr(model.config, "max_position_embeddings", None)
        engine = cls(
            temporary.name, settings, dtype=dtype, max_model_len=max_len, load_format="dummy", temporary=temporary
        )
        if weights is not None:
            engine.load_weights(weights)
        return engine

    @classmethod
    def from_pretrained(cls, path: str, settings: VLLMSettings | None = None) -> VLLMEngine:
        """An engine on a saved model folder (``save_pretrained``), its weights read from it."""
        from transformers import AutoConfig

        settings = settings or VLLMSettings()
        config = AutoConfig.from_pretrained(path)
        dtype = settings.dtype or str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
        max_len = settings.max_model_len or getattr(config, "max_position_embeddings", None)
        return cls(path, settings, dtype=dtype, max_model_len=max_len)

    # -- weights -----------------------------------------------------------------------------------------------------

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights by ``weights`` (plain-model names, whole tensors) and drop its prefix cache
        (cached prompts were computed with the old weights). Wakes a sleeping engine."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the engine's GPU memory (weights and KV cache) until the next :meth:`load_weights`; a no-op without
        sleep mode."""
        if self.sleeps and not self.asleep:
            self.llm.reset_prefix_cache()
            self.llm.sleep(level=2)  # weights too: the next rollout loads the updated ones anyway
            self.asleep = True

    # -- sampling ----------------------------------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        eos_token_id: int,
        pad_token_id: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        num_samples: int = 1,
        seeds: Sequence[int] | None = None,
        return_logprobs: bool = False,
        device: torch.device | str = "cpu",
    ) -> Generation:
        """Sample responses as :func:`~lit_rlhf.generation.generate` does, with the same meaning of every setting.

        Args:
            prompts: each prompt's token ids (no padding), none empty.
            max_new_tokens: most tokens per response; a response stops at its first ``eos_token_id`` (kept).
            eos_token_id: the id that ends a response.
            pad_token_id: written after a response's end.
            do_sample: sample (else greedy).
            temperature, top_k, top_p: sampling (``top_k=0``, ``top_p=1``: no filter).
            num_samples: responses per prompt, prompt-major (prompt 0's first).
            seeds: one random seed per prompt (the same seeds give the same samples); ``None``: vLLM's own stream.
            return_logprobs: also return each sampled token's log-probability under the distribution it was drawn
                from (after temperature, top-k and top-p).
            device: where the returned tensors go.

        Returns:
            :class:`~lit_rlhf.generation.Generation` with ``len(prompts) * num_samples`` rows.

        Raises:
            ConfigError: sampling settings it cannot sample with.
            ValueError: an empty prompt, or a prompt longer than the engine's ``max_model_len``.
        """
        check_sampling(max_new_tokens, temperature, top_k, top_p, do_sample=do_sample)
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"one seed per prompt: got {len(seeds)} seeds for {len(prompts)} prompts")
        for ids in prompts:
            if len(ids) == 0:
                raise ValueError("an empty prompt (no tokens) cannot be answered; give every prompt some text")
        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep: load the policy's weights (load_weights) to wake it")
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {"temperature": 0.0}
        params = [
            self._vllm.SamplingParams(
                n=num_samples,
                max_tokens=max_new_tokens,
                stop_token_ids=[eos_token_id],
                detokenize=False,
                logprobs=0 if return_logprobs else None,
                seed=None if seeds is None else int(seeds[i]),
                **sampling,
            )
            for i in range(len(prompts))
        ]
        inputs = [{"prompt_token_ids": [int(t) for t in ids]} for ids in prompts]
        with preserved_rng():
            outputs = self.llm.generate(inputs, params, use_tqdm=False)
        completions = [completion for output in outputs for completion in sorted(output.outputs, key=_index)]
        return _as_generation(completions, eos_token_id, pad_token_id, return_logprobs, device)

    def close(self) -> None:
        """Shut the engine down and free its memory. A process group the training made stays: vLLM's own shutdown
        would destroy it, so under DDP or FSDP2 only the engine's parts and its own groups are released."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        from vllm.distributed import parallel_state

        core = llm.llm_engine.engine_core
        if self.made_process_group:
            core.shutdown()  # and the process group of one it made
        else:
            engine_core = core.engine_core
            engine_core.model_executor.shutdown()
            engine_core.scheduler.shutdown()
            finalizer = getattr(core, "_finalizer", None)
            if finalizer is not None:
                finalizer.detach()  # it would run the whole shutdown when the engine is collected
            gc.unfreeze()
            parallel_state.destroy_model_parallel()
            if parallel_state._WORLD is not None:
                parallel_state._WORLD.destroy()
                parallel_state._WORLD = None
        del llm, core
        gc.collect()
        if self.made_process_group and dist.is_available() and dist.is_initialized():
            parallel_state.destroy_model_parallel()
            parallel_state.destroy_distributed_environment()
        if self.on_cuda:
            torch.cuda.empty_cache()
        if self._temporary is not None:
            self._temporary.cleanup()


def _index(completion: Any) -> int:
    return completion.index


def _as_generation(
    completions: Sequence[Any], eos_token_id: int, pad_token_id: int, with_logprobs: bool, device: torch.device | str
) -> Generation:
    """vLLM's completions as a right-padded :class:`Generation` (at least one column, as ``generate``'s)."""
    width = max([1, *(len(c.token_ids) for c in completions)])
    ids = torch.full((len(completions), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.bool)
    logprobs = torch.zeros((len(completions), width)) if with_logprobs else None
    for row, completion in enumerate(completions):
        tokens = list(completion.token_ids)
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, : len(tokens)] = True
        if logprobs is not None:
            values = [position[token].logprob for position, token in zip(completion.logprobs, tokens)]
            logprobs[row, : len(values)] = torch.tensor(values)
    has_eos = torch.tensor([len(c.token_ids) > 0 and c.token_ids[-1] == eos_token_id for c in completions])
    return Generation(
        response_ids=ids.to(device),
        response_mask=mask.to(device),
        has_eos=has_eos.to(device),
        logprobs=None if logprobs is None else logprobs.to(device),
    )
