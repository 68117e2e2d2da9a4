"""Sampling for the online modules with the engine the run chose: Hugging Face ``generate`` or colocated vLLM."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import torch

from lit_rlhf.engines.settings import VLLMSettings
from lit_rlhf.functional.logprobs import engine_logprob_gap
from lit_rlhf.functional.padding import unpadded
from lit_rlhf.generation import Generation, generate
from lit_rlhf.rollout import grouped_response_logprobs


class EngineSampling:
    """What :class:`~lit_rlhf.modules.online.OnlineRLModule` samples with (a mixin of a LightningModule).

    With ``sampling_engine: vllm`` a :class:`~lit_rlhf.engines.vllm_engine.VLLMEngine` is built at the first
    rollout (or validation) of each process, from the policy's config; before every rollout after an update the
    policy's weights reach it (:func:`~lit_rlhf.engines.weights.engine_weights`: whole, gathered from FSDP2 shards
    tensor by tensor, or LoRA merged) and its prefix cache is dropped. Each prompt's samples use a seed drawn from
    torch's random stream, so a resumed run samples what the uninterrupted one did. The update's ratio uses
    log-probabilities recomputed by the training policy; the gap to the engine's own is logged
    (:func:`~lit_rlhf.functional.logprobs.engine_logprob_gap`).
    """

    def use_sampling_engine(self, sampling_engine: str, vllm: VLLMSettings | Mapping[str, Any] | None) -> None:
        """Choose the engine (``generate`` or ``vllm``) and its settings (or their plain values); called in
        ``__init__`` after ``save_hyperparameters``."""
        if isinstance(vllm, Mapping):  # the plain values a checkpoint's hyperparameters hold
            vllm = VLLMSettings(**vllm)
        self.sampling_engine = sampling_engine
        self.vllm_settings = vllm if vllm is not None else VLLMSettings()
        self.hparams["vllm"] = asdict(vllm) if vllm is not None else None  # plain values in hparams.yaml
        self._engine: Any = None
        self._engine_iteration: int | None = None  # the policy iteration whose weights the engine holds

    def sampling_engine_ready(self) -> Any:
        """The vLLM engine, built on first use and holding the policy's current weights."""
        from lit_rlhf.engines.vllm_engine import VLLMEngine
        from lit_rlhf.engines.weights import engine_weights

        if self._engine is None:
            self._engine = VLLMEngine.for_policy(self.model, self.vllm_settings)
            if self._engine.made_process_group:
                # vLLM started a process group of one process: Lightning's advice to sync logs across processes,
                # which it then gives, does not apply.
                warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
        if self._engine_iteration != self.iteration or self._engine.asleep:
            self._engine.load_weights(engine_weights(self.model))  # every process together under FSDP2
            self._engine_iteration = self.iteration
        return self._engine

    def close_sampling_engine(self) -> None:
        """Shut the vLLM engine down (end of fit); the next rollout builds a new one."""
        if getattr(self, "_engine", None) is not None:
            self._engine.close()
            self._engine = None
            self._engine_iteration = None

    @torch.no_grad()
    def sample(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        *,
        num_samples: int = 1,
        do_sample: bool = True,
        policy_logprobs: bool = True,
        share_prompt: bool = False,
        gather_sharded: bool = True,
    ) -> tuple[Generation, dict[str, torch.Tensor]]:
        """Responses of the policy with the run's sampling settings (``max_new_tokens``, ``temperature``,
        ``top_k``, ``top_p`` from ``hparams``), and the engine's statistics.

        Args:
            prompt_ids: ``(batch, prompt_len)`` left-padded prompts; ``prompt_mask`` their attention mask.
            num_samples: responses per prompt, prompt-major.
            do_sample: sample (else greedy, as validation answers).
            policy_logprobs: return the sampled tokens' log-probabilities under the training policy (the
                ``generate`` path reads them from its sampling pass; the vLLM path recomputes them, one forward).
            share_prompt, gather_sharded: the ``generate`` path's options (:func:`~lit_rlhf.generation.generate`).

        Returns:
            The :class:`~lit_rlhf.generation.Generation` (``batch * num_samples`` rows; ``logprobs`` set with
            ``policy_logprobs`` and ``do_sample``) and statistics: with vLLM and ``policy_logprobs``, the
            log-probability gap (:func:`~lit_rlhf.functional.logprobs.engine_logprob_gap`); else empty.
        """
        hp = self.hparams
        settings: dict[str, Any] = {
            "max_new_tokens": hp.max_new_tokens,
            "eos_token_id": self.tokenizer.eos_token_id,
            "pad_token_id": self.tokenizer.pad_token_id,
            "num_samples": num_samples,
        }
        if do_sample:
            settings.update(do_sample=True, temperature=hp.temperature, top_k=hp.top_k, top_p=hp.top_p)
        want_logprobs = policy_logprobs and do_sample
        if self.sampling_engine != "vllm":
            generation = generate(
                self.model,
                prompt_ids,
                prompt_mask,
                share_prompt=share_prompt,
                return_logprobs=want_logprobs,
                gather_sharded=gather_sharded,
                **settings,
            )
            return generation, {}
        engine = self.sampling_engine_ready()
        prompts = unpadded(prompt_ids, prompt_mask)
        # One seed per prompt from torch's stream (restored on resume); greedy answers need none.
        seeds = torch.randint(0, 2**31 - 1, (len(prompts),)).tolist() if do_sample else None
        generation = engine.generate(
            prompts, seeds=seeds, return_logprobs=want_logprobs, device=self.device, **settings
        )
        if do_sample:
            engine.sleep()  # on a GPU: its memory goes to the update until the next rollout
        if not want_logprobs:
            return generation._replace(logprobs=None), {}
        was_training = self.model.training
        self.model.eval()
        try:
            recomputed = grouped_response_logprobs(
                self.model,
                prompt_ids,
                prompt_mask,
                num_samples,
                generation.response_ids,
                generation.response_mask,
                hp.temperature,
                share_prompt=share_prompt and num_samples > 1,
                padding_free=bool(hp.get("padding_free", False)),
            )
        finally:
            self.model.train(was_training)
        stats = engine_logprob_gap(generation.logprobs, recomputed, generation.response_mask)
        return generation._replace(logprobs=recomputed), stats
