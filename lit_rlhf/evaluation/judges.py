"""Pairwise judges: given a prompt and two responses A and B, which one is better (or no verdict)."""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from lit_rlhf.errors import UserError
from lit_rlhf.rewards.judge import LLMJudgeReward
from lit_rlhf.rewards.reward_model import RewardModelReward

__all__ = [
    "DEFAULT_PAIRWISE_TEMPLATE",
    "JudgeError",
    "LLMPairwiseJudge",
    "PairwiseJudge",
    "RewardModelJudge",
    "Verdict",
    "parse_verdict",
]

Verdict = Literal["A", "B"] | None
"""A pairwise judgement: the better response's position, or ``None`` when the judge gives no verdict."""

DEFAULT_PAIRWISE_TEMPLATE = (
    "Which response answers the prompt better?\n\n"
    "Prompt:\n{prompt}\n\n"
    "Response A:\n{response_a}\n\n"
    "Response B:\n{response_b}\n\n"
    "Reply with exactly one letter, A or B, and nothing else.\n"
    "Better response:"
)
"""The judge's prompt (a task-neutral A/B comparison); placeholders ``{prompt}``, ``{response_a}``,
``{response_b}``."""

_PLACEHOLDERS = ("prompt", "response_a", "response_b")
_STANDALONE_AB = re.compile(r"(?<!\w)([AB])(?!\w)")


class JudgeError(UserError):
    """A judge returned something unusable; the message names the judge and the pair."""


class PairwiseJudge:
    """Base of pairwise judges. Subclasses implement :meth:`judge`; callers use :meth:`__call__`, which checks it.

    A judge is not a ``torch.nn.Module``: when a Lightning callback holds one it is never trained nor saved in a
    checkpoint. Judges with weights override :meth:`to`.

    Attributes:
        name: how messages name the judge (defaults to the class name).
    """

    name: str = ""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.name or type(self).__name__

    def judge(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[Verdict]:
        """The better response of each pair.

        Args:
            prompts: ``num_pairs`` prompt texts.
            responses_a: the response in position A of each pair.
            responses_b: the response in position B of each pair.

        Returns:
            ``num_pairs`` verdicts: ``"A"``, ``"B"``, or ``None`` (no verdict: a tie, or an answer that says neither).
        """
        raise NotImplementedError

    def to(self, device: torch.device | str) -> PairwiseJudge:
        """Move the judge's weights (none here) to ``device``."""
        return self

    def __call__(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[Verdict]:
        """:meth:`judge`, with the inputs' lengths and each verdict checked.

        Raises:
            JudgeError: inputs of different lengths, the wrong number of verdicts, or a verdict that is not
                ``"A"``, ``"B"`` or ``None``.
        """
        if not len(prompts) == len(responses_a) == len(responses_b):
            raise JudgeError(
                f"{self.name}: got {len(prompts)} prompts, {len(responses_a)} A responses and "
                f"{len(responses_b)} B responses"
            )
        verdicts = list(self.judge(prompts, responses_a, responses_b))
        if len(verdicts) != len(prompts):
            raise JudgeError(f"{self.name} returned {len(verdicts)} verdicts for {len(prompts)} pairs")
        for i, verdict in enumerate(verdicts):
            if verdict not in ("A", "B", None):
                raise JudgeError(
                    f"{self.name} returned {verdict!r:.40} for pair {i} (prompt {prompts[i]!r:.60}); expected 'A', "
                    "'B' or None"
                )
        return verdicts


def parse_verdict(text: str) -> Verdict:
    """The verdict in an LLM judge's answer: the first *standalone* capital ``A`` or ``B``, else ``None``.

    Standalone means not next to another letter, digit or underscore, so ``"A"``, ``"B."``, ``"(A)"``,
    ``"**B**"``, ``"Response B"`` and ``"A is better"`` count, while the ``A`` of ``"Answer"`` or of ``"AB"`` does
    not. Only capitals count (lowercase ``a`` is an English article). Full-width letters are read as ASCII. When
    both letters occur, the first one wins: ``"A, not B"`` is ``"A"``.

    Args:
        text: the judge's decoded answer.

    Returns:
        ``"A"``, ``"B"`` or ``None``.
    """
    match = _STANDALONE_AB.search(unicodedata.normalize("NFKC", text))
    return match.group(1) if match else None  # type: ignore[return-value]


class RewardModelJudge(PairwiseJudge):
    """A reward model as a judge: the response it scores higher wins; an exact tie is no verdict (``None``).

    The reward model (e.g. the export of :class:`~lit_rlhf.modules.RewardModule`) reads *text* through
    :class:`~lit_rlhf.rewards.RewardModelReward` with its own tokenizer, every response scored as finished (with
    the EOS appended, where reward models read their score). Identical (prompt, response) texts are scored once, so
    two identical responses always tie. A reward model sees each response on its own, so it has no position bias:
    both orders of a pair always agree.

    Args:
        model_name_or_path: reward-model folder or hub name.
        tokenizer_name_or_path: where its tokenizer lives if not beside it.
        batch_size: sequences per forward pass.
        max_length: longest prompt + response in reward-model tokens; longer ones keep their end.
        use_chat_template: wrap the prompt in the reward model tokenizer's chat template (as in its training).
        system_prompt: optional system message for that template.
        dtype: ``float32``, ``bfloat16`` or ``float16`` weights.
        trust_remote_code: passed to ``from_pretrained``.
        attn_implementation: attention kernel (``eager``, ``sdpa``, ``flash_attention_2``, ...); ``None`` lets
            transformers choose.
        name: name in messages (default ``reward_model_judge``).
    """

    name = "reward_model_judge"

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer_name_or_path: str | None = None,
        batch_size: int = 64,
        max_length: int = 1024,
        use_chat_template: bool = False,
        system_prompt: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.reward = RewardModelReward(
            model_name_or_path,
            tokenizer_name_or_path,
            normalize=False,  # a monotone transform: the comparison is the same
            batch_size=batch_size,
            max_length=max_length,
            use_chat_template=use_chat_template,
            system_prompt=system_prompt,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            name=self.name,
        )
        self.last_scores_a: list[float] = []
        self.last_scores_b: list[float] = []

    def to(self, device: torch.device | str) -> RewardModelJudge:
        self.reward.to(device)
        return self

    def judge(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[Verdict]:
        """``"A"`` where A's score is higher, ``"B"`` where it is lower, ``None`` where they are equal.

        After the call, :attr:`last_scores_a` and :attr:`last_scores_b` hold the raw scores.
        """
        texts = list(zip(prompts, responses_a)) + list(zip(prompts, responses_b))
        unique = list(dict.fromkeys(texts))
        if unique:
            scores = self.reward([p for p, _ in unique], [r for _, r in unique], [{"prompt": p} for p, _ in unique])
            by_text = dict(zip(unique, scores.tolist()))
        else:
            by_text = {}
        n = len(prompts)
        self.last_scores_a = [by_text[t] for t in texts[:n]]
        self.last_scores_b = [by_text[t] for t in texts[n:]]
        return ["A" if a > b else "B" if b > a else None for a, b in zip(self.last_scores_a, self.last_scores_b)]


class _PairwisePrompts(LLMJudgeReward):
    """:class:`~lit_rlhf.rewards.judge.LLMJudgeReward`'s loading, prompt encoding (chat template or raw, BOS once,
    long prompts keep their end) and batched greedy left-padded generation, with pairwise prompts: a row is
    ``{prompt, response_a, response_b}``, the user message is ``template``, the system message (chat) or the text
    before it (raw) is ``system_template`` if not empty."""

    def fields(self, completion: str, row: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
        return {k: v.strip() if isinstance(v, str) else v for k, v in row.items()}

    def render(self, values: Mapping[str, Any]) -> str | list[dict[str, str]]:
        user = self.template.format_map(values)
        system = self.system_template.format_map(values) if self.system_template else ""
        if self.use_chat_template:
            messages = [{"role": "user", "content": user}]
            return [{"role": "system", "content": system}, *messages] if system else messages
        return f"{system}\n\n{user}" if system else user


class LLMPairwiseJudge(PairwiseJudge):
    """A frozen causal LM reads the prompt and both responses and answers which is better, greedily.

    The judge's prompt is ``template`` with ``{prompt}``, ``{response_a}`` and ``{response_b}`` filled in (each text
    stripped), wrapped in the judge tokenizer's chat template as the user message (after ``system_prompt`` as the
    system message, if given) or used raw (after ``system_prompt`` and a blank line). The answer is read by
    :func:`parse_verdict`: the first standalone capital ``A`` or ``B``, else no verdict (``None``, an abstention).

    Judge prompts are generated in batches of ``batch_size``, sorted by length and left-padded, with greedy
    decoding; prompts longer than ``max_prompt_length`` keep their end (the answer cue), and
    ``judge/truncated_rate`` counts them. After each call :attr:`last_outputs` holds the judge's answers and
    :attr:`last_stats` ``judge/parsed_rate`` and ``judge/truncated_rate``.

    Args:
        judge_name_or_path: the judge (any ``AutoModelForCausalLM``): a hub name or a ``save_pretrained`` folder.
        tokenizer_name_or_path: where its tokenizer lives if not beside it.
        template: the judge's prompt (the user message with a chat template); must name ``{response_a}`` and
            ``{response_b}``, may name ``{prompt}``, nothing else.
        system_prompt: system message (chat) or text before the prompt (raw); same placeholders; ``None`` = none.
        use_chat_template: ``None`` = when the judge tokenizer has one.
        batch_size: judge prompts per generation batch.
        max_new_tokens: judge answer length (the verdict is parsed from whatever it wrote by then).
        max_prompt_length: judge prompt tokens kept; ``None`` = the judge's context minus ``max_new_tokens``.
        dtype: ``float32``, ``bfloat16`` or ``float16`` judge weights; ``None`` = float32.
        trust_remote_code: passed to ``from_pretrained``.
        attn_implementation: attention kernel (``eager``, ``sdpa``, ``flash_attention_2``, ...); ``None`` lets
            transformers choose.
        name: name in messages (default ``llm_pairwise_judge``).

    Raises:
        ValueError: a template without ``{response_a}`` or ``{response_b}``, with another placeholder, or with a
            syntax error; a bad setting (see :class:`~lit_rlhf.rewards.judge.LLMJudgeReward`).
    """

    name = "llm_pairwise_judge"

    def __init__(
        self,
        judge_name_or_path: str,
        tokenizer_name_or_path: str | None = None,
        template: str = DEFAULT_PAIRWISE_TEMPLATE,
        system_prompt: str | None = None,
        use_chat_template: bool | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 4,
        max_prompt_length: int | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        for label, text in (("template", template), ("system_prompt", system_prompt or "")):
            try:
                names = {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}
            except ValueError as err:
                raise ValueError(f"{self.name}: the {label} cannot be parsed: {err}") from err
            unknown = sorted(names - set(_PLACEHOLDERS))
            if unknown:
                raise ValueError(
                    f"{self.name}: the {label} names {unknown}; the placeholders are {{prompt}}, {{response_a}} "
                    "and {response_b}"
                )
        if "{response_a}" not in template or "{response_b}" not in template:
            raise ValueError(f"{self.name}: the template must name both {{response_a}} and {{response_b}}")
        self.lm = _PairwisePrompts(
            judge_name_or_path,
            tokenizer_name_or_path,
            template=template,
            system_template=system_prompt or "",
            use_chat_template=use_chat_template,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            max_prompt_length=max_prompt_length,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            name=self.name,
        )
        self.last_outputs: list[str] = []
        self.last_stats: dict[str, float] = {}

    @property
    def tokenizer(self) -> Any:
        return self.lm.tokenizer

    @property
    def model(self) -> torch.nn.Module:
        return self.lm.model

    def to(self, device: torch.device | str) -> LLMPairwiseJudge:
        self.lm.to(device)
        return self

    def prompt(self, prompt: str, response_a: str, response_b: str) -> str | list[dict[str, str]]:
        """The judge's rendered prompt for one pair: chat messages or one raw string."""
        return self.lm.render(
            self.lm.fields("", {"prompt": prompt, "response_a": response_a, "response_b": response_b})
        )

    def judge(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[Verdict]:
        if not prompts:
            self.last_outputs, self.last_stats = [], {}
            return []
        rows = [{"prompt": p, "response_a": a, "response_b": b} for p, a, b in zip(prompts, responses_a, responses_b)]
        outputs, truncated = self.lm.judge([""] * len(rows), rows)
        verdicts = [parse_verdict(text) for text in outputs]
        self.last_outputs = outputs
        self.last_stats = {
            "judge/parsed_rate": sum(v is not None for v in verdicts) / len(rows),
            "judge/truncated_rate": truncated / len(rows),
        }
        return verdicts
