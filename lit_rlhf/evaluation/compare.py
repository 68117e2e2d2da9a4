"""Win rate of a policy against a reference (any two causal LMs): greedy responses, judged in both orders."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_rlhf.data.tokenization import encode_prompt
from lit_rlhf.engines.settings import VLLMSettings, check_engine
from lit_rlhf.evaluation.engine import engine_responses, open_engine
from lit_rlhf.evaluation.judges import PairwiseJudge, Verdict
from lit_rlhf.functional.winrate import CIMethod, WinRateStats, pair_scores, win_rate_stats
from lit_rlhf.generation import responses_in_batches
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer
from lit_rlhf.tables import markdown_table

log = logging.getLogger(__name__)

__all__ = [
    "PairRecord",
    "WinRateResult",
    "compare_responses",
    "encode_prompts",
    "greedy_responses",
    "judge_both_orders",
    "win_rate",
]


@dataclass
class PairRecord:
    """One prompt's pair and the judge's two verdicts.

    Attributes:
        prompt: the prompt text.
        policy_response: the policy's greedy response.
        reference_response: the reference's greedy response.
        verdict_policy_as_a: the verdict with the policy's response in position A (``"A"`` = policy preferred).
        verdict_policy_as_b: the verdict with the policy's response in position B (``"B"`` = policy preferred).
        score: the pair's score (mean of the two orders: policy 1, no verdict 0.5, reference 0).
    """

    prompt: str
    policy_response: str
    reference_response: str
    verdict_policy_as_a: Verdict
    verdict_policy_as_b: Verdict
    score: float


@dataclass
class WinRateResult:
    """Win rate of the policy over the reference: the figures of
    :class:`~lit_rlhf.functional.winrate.WinRateStats` (read them as attributes: ``result.win_rate``,
    ``result.ci_low``, ...), how the interval was made, and the per-pair records.

    Attributes:
        stats: the :class:`~lit_rlhf.functional.winrate.WinRateStats` (``win_rate``, ``ci_low``, ``ci_high``,
            ``wins``, ``losses``, ``ties``, ``num_pairs``, ``tie_rate``, ``abstain_rate``, ``position_a_rate``).
        confidence: coverage of ``[ci_low, ci_high]``.
        ci_method: ``"bootstrap"`` or ``"normal"``.
        pairs: one :class:`PairRecord` per prompt, in prompt order.
    """

    stats: WinRateStats
    confidence: float
    ci_method: str
    pairs: list[PairRecord] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        if name == "stats":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        if name in WinRateStats._fields:
            return getattr(self.stats, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def summary(self) -> dict[str, Any]:
        """The figures without the pairs."""
        return {**self.stats._asdict(), "confidence": self.confidence, "ci_method": self.ci_method}

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-serialisable."""
        return {**self.summary(), "pairs": [asdict(pair) for pair in self.pairs]}

    def table(self) -> str:
        """The figures as a small markdown table."""
        position = "-" if self.position_a_rate is None else f"{self.position_a_rate:.1%}"
        rows = [
            ("win rate", f"{self.win_rate:.3f}"),
            (f"{self.confidence:.0%} CI ({self.ci_method})", f"[{self.ci_low:.3f}, {self.ci_high:.3f}]"),
            ("wins / ties / losses", f"{self.wins} / {self.ties} / {self.losses}"),
            ("tie rate", f"{self.tie_rate:.1%}"),
            ("abstain rate (single judgements)", f"{self.abstain_rate:.1%}"),
            ("judge picked position A", position),
            ("pairs (each judged in both orders)", str(self.num_pairs)),
        ]
        return markdown_table(("figure", "value"), rows)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
    max_prompt_length: int | None = None,
) -> tuple[list[list[int]], int]:
    """Prompt ids as the model sees them before its answer (as the DataModules encode them).

    Args:
        tokenizer: the model's tokenizer.
        prompts: prompt texts.
        use_chat_template: wrap each prompt as a user message in the tokenizer's chat template (with the generation
            prompt); ``None`` = when the tokenizer has one.
        system_prompt: system message (chat) or text before the prompt (raw).
        max_prompt_length: longer prompts keep their last ``max_prompt_length`` tokens.

    Returns:
        The ids of each prompt, and how many were truncated.
    """
    chat = getattr(tokenizer, "chat_template", None) is not None if use_chat_template is None else use_chat_template
    ids, truncated = [], 0
    for prompt in prompts:
        prompt_ids = encode_prompt(tokenizer, prompt, chat, system_prompt)
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            prompt_ids = prompt_ids[-max_prompt_length:]
            truncated += 1
        ids.append(prompt_ids)
    return ids, truncated


def greedy_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy responses (special tokens removed) of ``model`` to each prompt, in prompt order.

    Prompts are generated in batches of ``batch_size``, sorted by length and left-padded, on the model's device, in
    eval mode (restored afterwards), with KV cache, cut after the first EOS (:func:`lit_rlhf.generation.generate`).

    Args:
        model: a causal LM (unwrapped, not a DDP wrapper).
        tokenizer: its tokenizer (pad and EOS ids).
        prompt_ids: each prompt's ids, e.g. from :func:`encode_prompts`.
        max_new_tokens: longest response.
        batch_size: prompts per generation batch.

    Returns:
        ``len(prompt_ids)`` response texts.
    """
    return responses_in_batches(model, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size)


def judge_both_orders(
    judge: PairwiseJudge,
    prompts: Sequence[str],
    policy_responses: Sequence[str],
    reference_responses: Sequence[str],
) -> tuple[list[Verdict], list[Verdict]]:
    """The judge's verdicts with the policy's response in position A, then in position B.

    Both orders go to the judge in one call of ``2 * num_pairs`` pairs (the policy-as-A pairs first), so an LLM
    judge batches them together.

    Returns:
        ``(policy_as_a, policy_as_b)``: ``num_pairs`` verdicts each.
    """
    n = len(prompts)
    if not n == len(policy_responses) == len(reference_responses):
        raise ValueError(
            f"got {n} prompts, {len(policy_responses)} policy responses and {len(reference_responses)} reference "
            "responses"
        )
    verdicts = judge(
        list(prompts) * 2,
        list(policy_responses) + list(reference_responses),
        list(reference_responses) + list(policy_responses),
    )
    return verdicts[:n], verdicts[n:]


def compare_responses(
    prompts: Sequence[str],
    policy_responses: Sequence[str],
    reference_responses: Sequence[str],
    judge: PairwiseJudge,
    *,
    confidence: float = 0.95,
    ci_method: CIMethod = "bootstrap",
    num_resamples: int = 10_000,
    seed: int = 0,
) -> WinRateResult:
    """Judge given responses in both orders and compute the win rate (see
    :func:`~lit_rlhf.functional.winrate.win_rate_stats` for the scoring and the interval)."""
    if not prompts:
        raise ValueError("no prompts to compute a win rate on")
    policy_as_a, policy_as_b = judge_both_orders(judge, prompts, policy_responses, reference_responses)
    stats = win_rate_stats(
        policy_as_a, policy_as_b, confidence=confidence, ci_method=ci_method, num_resamples=num_resamples, seed=seed
    )
    scores = pair_scores(policy_as_a, policy_as_b).tolist()
    pairs = [
        PairRecord(p, pol, ref, v1, v2, s)
        for p, pol, ref, v1, v2, s in zip(
            prompts, policy_responses, reference_responses, policy_as_a, policy_as_b, scores
        )
    ]
    return WinRateResult(stats, confidence=confidence, ci_method=ci_method, pairs=pairs)


def _model_and_tokenizer(
    model: PreTrainedModel | str,
    tokenizer: PreTrainedTokenizerBase | None,
    role: str,
    dtype: str | None,
    load: bool = True,
) -> tuple[PreTrainedModel | str, PreTrainedTokenizerBase]:
    if isinstance(model, str):
        tokenizer = tokenizer or load_tokenizer(model)
        return (load_causal_lm(model, tokenizer, dtype=dtype).eval() if load else model), tokenizer
    if tokenizer is None:
        raise ValueError(f"the {role} is a model object: pass its tokenizer too")
    return model, tokenizer


def _context_budget(context: int | None, max_new_tokens: int) -> int | None:
    if context is None:
        return None
    if context <= max_new_tokens:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in a context of {context}")
    return context - max_new_tokens


def win_rate(
    policy: PreTrainedModel | str,
    reference: PreTrainedModel | str,
    prompts: Sequence[str],
    judge: PairwiseJudge,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    reference_tokenizer: PreTrainedTokenizerBase | None = None,
    prompt_ids: Sequence[Sequence[int]] | None = None,
    use_chat_template: bool | None = None,
    system_prompt: str | None = None,
    dtype: str | None = None,
    reference_responses: Sequence[str] | None = None,
    confidence: float = 0.95,
    ci_method: CIMethod = "bootstrap",
    num_resamples: int = 10_000,
    seed: int = 0,
    engine: str = "generate",
    vllm: VLLMSettings | None = None,
) -> WinRateResult:
    """Greedy responses of the policy and of the reference to each prompt, judged in both orders.

    Each model answers with its own tokenizer (so any two causal LMs can be compared); prompts longer than a model's
    context minus ``max_new_tokens`` keep their end (a warning counts them). The judge sees texts only.

    Args:
        policy: the model under test: a ``PreTrainedModel`` (with ``tokenizer``) or a folder / hub name.
        reference: the model to beat, likewise (with ``reference_tokenizer``, default ``tokenizer``).
        prompts: the prompt texts, as the judge sees them.
        judge: a :class:`~lit_rlhf.evaluation.judges.PairwiseJudge` (already on the right device).
        max_new_tokens: longest response.
        batch_size: prompts per generation batch.
        tokenizer: the policy's tokenizer (loaded from ``policy`` when it is a path).
        reference_tokenizer: the reference's tokenizer; ``None`` = ``tokenizer`` for a model object, loaded for a path.
        prompt_ids: the prompts already encoded for the policy's tokenizer (e.g. a DataModule's ``prompt_ids``);
            used for the reference too when it shares that tokenizer. ``None`` = :func:`encode_prompts`.
        use_chat_template, system_prompt: how :func:`encode_prompts` wraps the prompts.
        dtype: weights' dtype for models loaded from a path.
        reference_responses: the reference's greedy responses to these prompts from an earlier call (a frozen
            reference answers the same every time): not generated again.
        confidence, ci_method, num_resamples, seed: the interval (see
            :func:`~lit_rlhf.functional.winrate.win_rate_stats`).
        engine: ``generate`` (Hugging Face ``generate``) or ``vllm``: a vLLM engine per model, one at a time
            (built on a folder, or handed a model object's weights), closed after its answers; a model's context is
            then the engine's ``max_model_len``.
        vllm: the vLLM engine's settings (default :class:`~lit_rlhf.engines.settings.VLLMSettings` with ``dtype``).

    Returns:
        :class:`WinRateResult`.

    Raises:
        ConfigError: an unknown ``engine``, or ``vllm`` without vLLM installed (before any model loads).
    """
    check_engine(engine)
    if engine == "vllm":
        vllm = vllm or VLLMSettings(dtype=dtype)
    load = engine == "generate"
    policy, tokenizer = _model_and_tokenizer(policy, tokenizer, "policy", dtype, load)
    if isinstance(reference, str):
        reference, reference_tokenizer = _model_and_tokenizer(reference, reference_tokenizer, "reference", dtype, load)
    else:
        reference_tokenizer = reference_tokenizer or tokenizer
    if prompt_ids is not None and len(prompt_ids) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(prompt_ids)} prompt_ids")
    if reference_responses is not None and len(reference_responses) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(reference_responses)} reference_responses")
    models = [("policy", policy, tokenizer)]
    if reference_responses is None:
        models.append(("reference", reference, reference_tokenizer))
    responses = []
    for role, model, model_tokenizer in models:
        sampler = open_engine(model, model_tokenizer, vllm) if engine == "vllm" else None
        try:
            if sampler is not None:
                context = sampler.max_model_len
            else:
                context = getattr(model.config, "max_position_embeddings", None)
            budget = _context_budget(context, max_new_tokens)
            if prompt_ids is not None and model_tokenizer is tokenizer:
                ids = [list(p)[-budget:] if budget else list(p) for p in prompt_ids]
                truncated = sum(len(p) > len(i) for p, i in zip(prompt_ids, ids))
            else:
                ids, truncated = encode_prompts(
                    model_tokenizer,
                    prompts,
                    use_chat_template=use_chat_template,
                    system_prompt=system_prompt,
                    max_prompt_length=budget,
                )
            if truncated:
                log.warning("%d of %d prompts were cut to the %s's last %s tokens", truncated, len(ids), role, budget)
            if sampler is None:
                answers = greedy_responses(
                    model, model_tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=batch_size
                )
            else:
                answers = engine_responses(sampler, model_tokenizer, ids, max_new_tokens=max_new_tokens)
        finally:
            if sampler is not None:
                sampler.close()
        responses.append(answers)
    return compare_responses(
        prompts,
        responses[0],
        responses[1] if reference_responses is None else reference_responses,
        judge,
        confidence=confidence,
        ci_method=ci_method,
        num_resamples=num_resamples,
        seed=seed,
    )
