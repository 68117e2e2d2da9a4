"""A frozen LLM judge as a reward source: the completion is the judge's system prompt, the judge answers a
multiple-choice question under it, and the reward says whether it picked the right choice (multiple-choice QA
prompt optimisation)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lit_rlhf.functional.padding import pad_left
from lit_rlhf.generation import decode_responses, generate
from lit_rlhf.models.loading import load_causal_lm, load_tokenizer
from lit_rlhf.rewards.base import RewardError, RewardSource

__all__ = ["DEFAULT_TEMPLATE", "LLMJudgeReward", "format_choices", "parse_choice"]

DEFAULT_TEMPLATE = (
    "Context: {context}\n"
    "Question: {question}\n"
    "Choices:\n"
    "{choices}\n"
    "Give your final answer as only one of {choice_numbers}, without explanation.\n"
    "Final answer:"
)
"""The user message of the judge: the row's context, question and numbered choices, then the answer cue
(placeholders: see :class:`LLMJudgeReward`)."""

_WHOLE_NUMBER = re.compile(r"(?<!\d)\d+(?!\d)")
_EDGE_PUNCTUATION = " \t\n.,:;!?\"'`()[]{}<>*"


def _normalize(text: str) -> str:
    """Compatibility-normalized (full-width digits become ASCII), case-folded, whitespace-collapsed text without
    surrounding punctuation: what two texts are compared as."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.strip(_EDGE_PUNCTUATION)


def parse_choice(text: str, choices: Sequence[str]) -> int | None:
    """Which choice a judge's answer picks, or ``None`` when it picks none.

    Three rules, in order:

    1. The whole answer *is* one choice's text (compared after :func:`_normalize`: case, spacing and surrounding
       punctuation ignored), e.g. ``"Paris."`` for ``["Paris", "London"]``. This comes first so that choices which
       are numbers themselves (``["10", "12", "14"]``) are read as text, not as choice numbers.
    2. The first *whole* number in the answer between 1 and ``len(choices)`` is a choice number: ``"2"``,
       ``"Answer: 3."``, ``"정답은 2번입니다"``, ``"２"`` (full-width). Digits are read as whole numbers, so ``"12"``
       with 3 choices is not choice 1 (as reading only the first digit would have it); out-of-range numbers
       are skipped.
    3. Otherwise the choice whose text occurs earliest in the answer (the longest one if several start there), e.g.
       ``"the answer is Paris"``. Containment, not word matching, so that Korean particles (``"서울이다"``) still
       match; a short choice such as ``"No"`` therefore also matches ``"no idea"``.

    Args:
        text: the judge's decoded answer.
        choices: the choice texts, in the order they were numbered ``1..N`` for the judge.

    Returns:
        The 0-based index of the picked choice in ``choices``, or ``None`` when no rule applies (no digit in range,
        no choice text): such an answer is *unparsed*, never an error.
    """
    normalized = _normalize(text)
    targets = [_normalize(choice) for choice in choices]
    for index, target in enumerate(targets):
        if target and normalized == target:
            return index
    for match in _WHOLE_NUMBER.finditer(unicodedata.normalize("NFKC", text)):
        number = int(match.group())
        if 1 <= number <= len(choices):
            return number - 1
    best: tuple[int, int] | None = None  # (position, -length) of the best containment so far
    picked = None
    for index, target in enumerate(targets):
        position = normalized.find(target) if target else -1
        if position >= 0 and (best is None or (position, -len(target)) < best):
            best, picked = (position, -len(target)), index
    return picked


def format_choices(choices: Sequence[str]) -> str:
    """The choices as numbered lines, as the judge sees them: ``"1. Paris\\n2. London"``."""
    return "\n".join(f"{number}. {choice}" for number, choice in enumerate(choices, start=1))


class _AnyField(dict):
    """A format mapping that fills every placeholder with a dummy value (to check a template once at start)."""

    def __missing__(self, key: str) -> str:
        return "x"


class LLMJudgeReward(RewardSource):
    """A frozen causal LM judges multiple-choice questions with the completion as its system prompt.

    Multiple-choice QA prompt optimisation: the policy writes a one-sentence system prompt; the judge answers each
    row's question under it, greedily; the reward is ``correct_reward`` when the judge picks the row's ``answer``,
    ``wrong_reward`` when it picks another choice, and ``unparsed_reward`` when its answer names no choice (see
    :func:`parse_choice`).

    .. code-block:: yaml

        reward:
          class_path: lit_rlhf.rewards.judge.LLMJudgeReward
          init_args:
            judge_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
            dtype: bfloat16

    Rows need ``choices`` (a list of strings, e.g. from
    :class:`~lit_rlhf.data.prompt_optimization.PromptOptimizationDataModule`), ``answer`` (one of them), and every
    other field the templates name. Placeholders of ``template``, ``system_template`` and ``raw_template``:

    - ``{completion}``: the policy's completion, stripped (the system prompt under test);
    - ``{choices}``: the choices as numbered lines ``1. ...``; ``{choice_numbers}``: ``"1, 2, 3"``;
      ``{num_choices}``: ``3``;
    - any field of the row, e.g. ``{context}``, ``{question}``, ``{answer}`` (string values are stripped).

    The judge is a plain attribute of this object, not a ``torch.nn.Module`` child of the training module: it is
    neither trained nor saved in checkpoints, and it is reloaded from ``judge_name_or_path`` on resume. The module
    moves it to its device with :meth:`to`. After each call, :attr:`last_stats` holds the batch's parse statistics
    (``judge/parsed_rate``, ``judge/correct_rate``, ``judge/truncated_rate``) and :attr:`last_outputs` /
    :attr:`last_choices` the judge's answers and the parsed choice indices, for modules to log.

    Args:
        judge_name_or_path: the judge (any ``AutoModelForCausalLM``): a hub name or a ``save_pretrained`` folder.
        tokenizer_name_or_path: where its tokenizer lives if not beside it.
        template: the user message (chat) or the question part (raw) of the judge's prompt.
        system_template: the system message (chat) or the text before the question (raw); ``"{completion}"``.
        use_chat_template: wrap the messages (system = ``system_template``, user = ``template``) in the judge
            tokenizer's chat template; ``None`` = when it has one and no ``raw_template`` is given.
        raw_template: without a chat template, the whole prompt as one string (e.g. a model's own chat format
            written by hand, such as Llama 3's header tokens); ``None`` = ``system_template``, a blank line, then
            ``template``. A raw prompt that starts with the tokenizer's BOS token gets no second one.
        correct_reward: reward when the judge picks the row's answer.
        wrong_reward: reward when it picks another choice.
        unparsed_reward: reward when its answer names no choice; ``None`` = ``wrong_reward``.
        batch_size: judge prompts per generation batch (sorted by length to pad less).
        max_new_tokens: judge answer length limit (the answer is parsed from whatever it wrote by then).
        max_prompt_length: judge prompt tokens kept (longer prompts keep their end: the question and the answer cue
            survive, the start of the system prompt is cut, and ``judge/truncated_rate`` counts them); ``None`` =
            the judge's context minus ``max_new_tokens``.
        repetition_penalty: written to the judge's generation config (e.g. 1.2 against repeated answers); 1.0 =
            plain greedy, whatever the checkpoint's ``generation_config.json`` says.
        dtype: ``float32``, ``bfloat16`` or ``float16`` judge weights; ``None`` = float32.
        trust_remote_code: passed to ``from_pretrained``.
        attn_implementation: attention kernel (``eager``, ``sdpa``, ``flash_attention_2``, ...); ``None`` lets
            transformers choose.
        name: name in logs (default ``llm_judge``).

    Raises:
        ValueError: a bad setting, a template with a syntax error, or a chat template that refuses the messages.
    """

    name = "llm_judge"

    def __init__(
        self,
        judge_name_or_path: str,
        tokenizer_name_or_path: str | None = None,
        template: str = DEFAULT_TEMPLATE,
        system_template: str = "{completion}",
        use_chat_template: bool | None = None,
        raw_template: str | None = None,
        correct_reward: float = 1.0,
        wrong_reward: float = -1.0,
        unparsed_reward: float | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 16,
        max_prompt_length: int | None = None,
        repetition_penalty: float = 1.0,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size} and {max_new_tokens}")
        if repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        self.tokenizer = load_tokenizer(
            tokenizer_name_or_path or judge_name_or_path, padding_side="left", trust_remote_code=trust_remote_code
        )
        has_chat = getattr(self.tokenizer, "chat_template", None) is not None
        if use_chat_template and raw_template is not None:
            raise ValueError("use_chat_template=True and a raw_template exclude each other; pick one")
        if use_chat_template and not has_chat:
            raise ValueError(f"use_chat_template=True but the judge tokenizer of {judge_name_or_path!r} has none")
        self.use_chat_template = (has_chat and raw_template is None) if use_chat_template is None else use_chat_template
        self.template = template
        self.system_template = system_template
        self.raw_template = raw_template
        self.correct_reward = float(correct_reward)
        self.wrong_reward = float(wrong_reward)
        self.unparsed_reward = self.wrong_reward if unparsed_reward is None else float(unparsed_reward)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

        model = load_causal_lm(
            judge_name_or_path,
            self.tokenizer,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
        ).eval()
        model.requires_grad_(False)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.repetition_penalty = repetition_penalty
        self.model = model
        context = getattr(model.config, "max_position_embeddings", None)
        if max_prompt_length is None:
            max_prompt_length = context - max_new_tokens if context else None
        if max_prompt_length is not None and max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {max_prompt_length}")
        if context and max_prompt_length and max_prompt_length + max_new_tokens > context:
            raise ValueError(
                f"judge max_prompt_length={max_prompt_length} + max_new_tokens={max_new_tokens} exceed the context "
                f"of {judge_name_or_path!r} ({context} positions)"
            )
        self.max_prompt_length = max_prompt_length
        # Fail now, not after the first rollout, on a bad placeholder or a chat template that refuses the messages.
        try:
            prompt = self.render(_AnyField())
        except (IndexError, ValueError) as err:
            raise ValueError(f"{self.name}: the judge prompt templates cannot be rendered: {err}") from err
        try:
            self.encode(prompt)
        except Exception as err:  # jinja2's TemplateError (raise_exception in the template) and kin
            if not self.use_chat_template:
                raise
            raise ValueError(
                f"{self.name}: the chat template of {judge_name_or_path!r} refused a system + user conversation "
                f"({err}); pass use_chat_template: false with a raw_template"
            ) from err
        self.last_stats: dict[str, float] = {}
        self.last_outputs: list[str] = []
        self.last_choices: list[int | None] = []

    def models(self) -> list[torch.nn.Module]:
        return [self.model]

    def to(self, device: torch.device | str) -> LLMJudgeReward:
        """Move the judge (e.g. to the policy's device)."""
        self.model.to(device)
        return self

    # -- prompts -------------------------------------------------------------------------------------------------

    def fields(self, completion: str, row: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
        """The placeholder values of one sample (see the class docstring).

        Raises:
            RewardError: the row has no ``choices`` list of strings.
        """
        choices = self.choices_of(row, index)
        values: dict[str, Any] = {k: v.strip() if isinstance(v, str) else v for k, v in row.items()}
        values.update(
            completion=completion.strip(),
            choices=format_choices(choices),
            choice_numbers=", ".join(str(n) for n in range(1, len(choices) + 1)),
            num_choices=len(choices),
        )
        return values

    def render(self, values: Mapping[str, Any]) -> str | list[dict[str, str]]:
        """The judge's prompt for one sample's placeholder ``values``: chat messages or one raw string."""
        system = self.system_template.format_map(values)
        user = self.template.format_map(values)
        if self.use_chat_template:
            return [{"role": "system", "content": system}, {"role": "user", "content": user}]
        if self.raw_template is not None:
            return self.raw_template.format_map(values)
        return f"{system}\n\n{user}" if system else user

    def encode(self, prompt: str | list[dict[str, str]]) -> list[int]:
        """Judge token ids of a rendered prompt (the chat template's generation prompt included)."""
        if isinstance(prompt, list):
            text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token
        return self.tokenizer(prompt, add_special_tokens=not (bos and prompt.startswith(bos)))["input_ids"]

    def choices_of(self, row: Mapping[str, Any], index: int) -> list[str]:
        choices = row.get("choices")
        if not isinstance(choices, (list, tuple)) or not choices or not all(isinstance(c, str) for c in choices):
            raise RewardError(
                f"{self.name}: row of sample {index} needs 'choices' as a non-empty list of strings, got "
                f"{type(choices).__name__} {choices!r:.80} (PromptOptimizationDataModule parses a CSV's list literal)"
            )
        return [c.strip() for c in choices]

    # -- scoring -------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def judge(self, completions: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], int]:
        """The judge's greedy answers (decoded, special tokens removed), and how many prompts were truncated.

        Raises:
            RewardError: a row lacks a field a template names, or has no ``choices`` list.
        """
        sequences = []
        truncated = 0
        for i, (completion, row) in enumerate(zip(completions, rows)):
            try:
                ids = self.encode(self.render(self.fields(completion, row, i)))
            except KeyError as err:
                raise RewardError(
                    f"{self.name}: the judge template names {err} but the row of sample {i} has no such field "
                    f"(fields: {', '.join(sorted(map(str, row)))})"
                ) from err
            if self.max_prompt_length is not None and len(ids) > self.max_prompt_length:
                ids = ids[-self.max_prompt_length :]
                truncated += 1
            sequences.append(ids)
        device = next(self.model.parameters()).device
        outputs: list[str] = [""] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            ids, mask = pad_left([sequences[i] for i in chunk], self.tokenizer.pad_token_id)
            generation = generate(
                self.model,
                ids.to(device),
                mask.to(device),
                max_new_tokens=self.max_new_tokens,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id,
                do_sample=False,
            )
            for i, text in zip(chunk, decode_responses(self.tokenizer, generation)):
                outputs[i] = text
        return outputs, truncated

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        rows: Sequence[dict[str, Any]],
        finished: Sequence[bool] | None = None,
    ) -> list[float]:
        """One reward per sample from the judge's answer to the sample's row under the completion as system prompt.

        ``finished`` is not used: a completion cut by the length limit is judged as it is (PPO's
        ``missing_eos_penalty`` handles it).

        Raises:
            RewardError: a row without ``choices`` or ``answer``, or without a field the templates name.
        """
        if not rows:
            self.last_stats, self.last_outputs, self.last_choices = {}, [], []
            return []
        answers = []
        for i, row in enumerate(rows):
            if not isinstance(row.get("answer"), str):
                raise RewardError(f"{self.name}: row of sample {i} needs an 'answer' string (fields: {sorted(row)})")
            answers.append(row["answer"].strip())
        outputs, truncated = self.judge(completions, rows)
        rewards, picked = [], []
        correct = 0
        for i, (output, row, answer) in enumerate(zip(outputs, rows, answers)):
            choices = self.choices_of(row, i)
            index = parse_choice(output, choices)
            picked.append(index)
            if index is None:
                rewards.append(self.unparsed_reward)
            elif choices[index] == answer:
                rewards.append(self.correct_reward)
                correct += 1
            else:
                rewards.append(self.wrong_reward)
        n = len(rows)
        self.last_outputs, self.last_choices = outputs, picked
        self.last_stats = {
            "judge/parsed_rate": sum(p is not None for p in picked) / n,
            "judge/correct_rate": correct / n,
            "judge/truncated_rate": truncated / n,
        }
        return rewards
