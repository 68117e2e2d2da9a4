"""Rule-based reward sources of the completion text: length, format, answer match, and their weighted sum.

The length and format sources are the rewards of smoltldr GRPO (``mlabonne/smoltldr``: a TL;DR of about 50
characters inside a ``<think>...</think><answer>...</answer>`` format); the answer match scores
rows that carry a reference answer.

Each is a :class:`~lit_rlhf.rewards.base.RewardSource` picked from YAML by ``class_path``, e.g.

.. code-block:: yaml

    reward:
      class_path: lit_rlhf.rewards.rules.WeightedSumReward
      init_args:
        sources:
          - class_path: lit_rlhf.rewards.rules.LengthReward
            init_args: {ideal_length: 50, unit: characters, scale: 0.01}
          - class_path: lit_rlhf.rewards.rules.RegexFormatReward
        weights: [1.0, 1.0]
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal

import torch

from lit_rlhf.rewards.base import RewardError, RewardSource

LengthUnit = Literal["characters", "words", "tokens"]

THINK_ANSWER_PATTERN = r"<think>.*?</think>\s*<answer>.*?</answer>"
"""The DeepSeek-R1 style think-then-answer format: a ``<think>`` block, then an ``<answer>`` block (and nothing else
when matched in full)."""

_NUMBER = re.compile(
    r"(?<![\w.])[-+\u2212]?"  # a sign only where it cannot be a hyphen or a minus between two operands ("5-3")
    r"(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)"  # 1,234.5 | 1234.5 | .5
    r"(?:[eE][-+]?\d+)?"
)


def _compile(pattern: str, flags: int, what: str, groups: int | None = None) -> re.Pattern[str]:
    """``re.compile`` with an error that names the argument; optionally check the number of capturing groups."""
    try:
        compiled = re.compile(pattern, flags)
    except re.error as err:
        raise ValueError(f"{what}: {pattern!r} is not a valid regular expression ({err})") from err
    if groups is not None and compiled.groups != groups:
        raise ValueError(f"{what}: {pattern!r} must have exactly {groups} capturing group, it has {compiled.groups}")
    return compiled


def _extract_last(pattern: re.Pattern[str] | None, text: str) -> str | None:
    """The first group of ``pattern``'s last match in ``text`` (``text`` itself without a pattern; ``None``: no
    match)."""
    if pattern is None:
        return text
    matches = list(pattern.finditer(text))
    return (matches[-1].group(1) or "") if matches else None


def parse_last_number(text: str) -> float | None:
    """The last number written in ``text``, or ``None`` when there is none.

    Understands a sign (``-3.5``, ``+2``, the Unicode minus ``−4``), thousands separators as commas in groups of three
    (``1,234`` = 1234; ``1,2`` is the two numbers 1 and 2), decimals (``0.5``, ``.5``) and exponents (``1e-3``). A
    ``-`` right after a letter, digit or dot is a hyphen, not a sign: the last number of ``5-3`` is 3, of
    ``2024-05`` is 5. Digits glued to a letter before them (``x2``) are not a number.

    Args:
        text: any text.

    Returns:
        The value as a float (possibly ``inf`` for absurdly large literals), or ``None``.
    """
    matches = list(_NUMBER.finditer(text))
    if not matches:
        return None
    return float(matches[-1].group(0).replace(",", "").replace("\u2212", "-"))


class LengthReward(RewardSource):
    """``-scale * |ideal_length - length(completion)|``: 0 at the ideal length, lower the further away.

    The plain character-count reward of smoltldr GRPO examples, ``-abs(50 - len(completion))``, is this source with
    ``ideal_length: 50``, ``unit: characters``, ``scale: 1`` and no ``extract``.

    Units:

    - ``characters``: Unicode code points (``len(text)``): ``"héllo"`` has 5, an emoji 1; a letter written with a
      combining accent counts 2. No tokenizer needed.
    - ``words``: whitespace-separated pieces (``len(text.split())``); punctuation sticks to its word. No tokenizer.
    - ``tokens``: tokens of ``tokenizer_name_or_path`` (the policy's tokenizer, to count what the model generated;
      the text is re-tokenized without special tokens, so a count can differ from the sampled tokens by a token
      or two at merges). The tokenizer is loaded at the first call, not when the config is parsed.

    Args:
        ideal_length: the length that gets the highest reward (0).
        unit: ``characters``, ``words`` or ``tokens``.
        scale: multiplies the distance, e.g. ``0.01`` so that 100 characters off cost 1 (the raw distance can reach
            hundreds and swamp other rewards and the KL penalty).
        extract: optional regular expression with one capturing group; the length is that of the group in its last
            match (e.g. ``<answer>(.*?)</answer>``: the summary only, so that a format with tags does not eat the
            length budget). A completion without a match is measured whole. Matched with ``DOTALL``.
        strip: strip surrounding whitespace before measuring.
        tokenizer_name_or_path: the tokenizer for ``unit: tokens`` (required then, ignored otherwise).
        name: name in logs (default ``length``).

    Raises:
        ValueError: an unknown unit, a negative ideal length, a scale that is not positive, a bad ``extract``
            pattern, or ``tokens`` without a tokenizer.
    """

    name = "length"

    def __init__(
        self,
        ideal_length: int = 50,
        unit: LengthUnit = "characters",
        scale: float = 1.0,
        extract: str | None = None,
        strip: bool = False,
        tokenizer_name_or_path: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if unit not in ("characters", "words", "tokens"):
            raise ValueError(f"{self.name}: unit must be 'characters', 'words' or 'tokens', got {unit!r}")
        if unit == "tokens" and not tokenizer_name_or_path:
            raise ValueError(
                f"{self.name}: unit 'tokens' needs tokenizer_name_or_path (the policy's tokenizer); reward sources "
                "see text only. Or count 'characters' or 'words'."
            )
        if ideal_length < 0:
            raise ValueError(f"{self.name}: ideal_length must be >= 0, got {ideal_length}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"{self.name}: scale must be a positive number, got {scale}")
        self.ideal_length = ideal_length
        self.unit = unit
        self.scale = scale
        self.extract = None if extract is None else _compile(extract, re.DOTALL, f"{self.name}: extract", groups=1)
        self.strip = strip
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self._tokenizer: Any = None

    def length(self, completion: str) -> int:
        """The length of one completion in :attr:`unit` (after ``extract`` and ``strip``)."""
        text = _extract_last(self.extract, completion)
        if text is None:
            text = completion
        if self.strip:
            text = text.strip()
        if self.unit == "characters":
            return len(text)
        if self.unit == "words":
            return len(text.split())
        if self._tokenizer is None:
            from lit_rlhf.models.loading import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_name_or_path, pad_with_eos=False)
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        rows: Sequence[dict[str, Any]],
        finished: Sequence[bool] | None = None,
    ) -> list[float]:
        return [-self.scale * abs(self.ideal_length - self.length(c)) for c in completions]


class RegexFormatReward(RewardSource):
    """``match_reward`` when the completion follows a format given as a regular expression, else ``miss_reward``.

    The default pattern is the think-then-answer format of :data:`THINK_ANSWER_PATTERN`, matched against the whole
    (stripped) completion: ``<think>...</think>`` then, after optional whitespace, ``<answer>...</answer>``, with
    newlines allowed inside (``DOTALL``) and nothing before or after.

    Args:
        pattern: the regular expression.
        match_reward: reward of a completion that matches.
        miss_reward: reward of one that does not.
        mode: ``fullmatch`` (the whole completion must match; ``^``/``$`` are then unnecessary) or ``search`` (a
            match anywhere is enough).
        dotall: ``.`` also matches newlines (a multi-line ``<think>`` block).
        ignore_case: case-insensitive matching.
        multiline: ``^`` and ``$`` match at every line (``re.MULTILINE``).
        strip: strip surrounding whitespace (e.g. a final newline) before matching.
        name: name in logs (default ``format``).

    Raises:
        ValueError: an invalid pattern or mode.
    """

    name = "format"

    def __init__(
        self,
        pattern: str = THINK_ANSWER_PATTERN,
        match_reward: float = 1.0,
        miss_reward: float = 0.0,
        mode: Literal["fullmatch", "search"] = "fullmatch",
        dotall: bool = True,
        ignore_case: bool = False,
        multiline: bool = False,
        strip: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if mode not in ("fullmatch", "search"):
            raise ValueError(f"{self.name}: mode must be 'fullmatch' or 'search', got {mode!r}")
        flags = re.DOTALL if dotall else 0
        flags |= (re.IGNORECASE if ignore_case else 0) | (re.MULTILINE if multiline else 0)
        self.pattern = _compile(pattern, flags, f"{self.name}: pattern")
        self.match_reward = match_reward
        self.miss_reward = miss_reward
        self.mode = mode
        self.strip = strip

    def matches(self, completion: str) -> bool:
        """Whether one completion follows the format."""
        text = completion.strip() if self.strip else completion
        found = self.pattern.fullmatch(text) if self.mode == "fullmatch" else self.pattern.search(text)
        return found is not None

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        rows: Sequence[dict[str, Any]],
        finished: Sequence[bool] | None = None,
    ) -> list[float]:
        return [self.match_reward if self.matches(c) else self.miss_reward for c in completions]


class AnswerMatchReward(RewardSource):
    """``correct`` when the completion's answer equals the row's reference answer, else ``wrong``.

    The answer is the completion itself or, with ``extract``, the group of the *last* match of that pattern (e.g.
    ``<answer>(.*?)</answer>``); a completion where the pattern does not match is wrong.

    - ``exact``: the answer equals the reference as text, after ``normalize`` (strip, whitespace runs to one space)
      and ``ignore_case``. A numeric reference is compared as ``str(value)``.
    - ``numeric``: the last number of the answer (see :func:`parse_last_number`: ``"1,234"``, ``"-3.5"``) is within
      ``tolerance`` of the reference's (a number, or the last number of its text), relative or absolute, whichever
      is looser (``math.isclose``). An answer without a number is wrong.

    Args:
        field: the row field with the reference answer.
        mode: ``exact`` or ``numeric``.
        extract: optional regular expression with exactly one capturing group (matched with ``DOTALL``).
        tolerance: ``numeric`` mode's relative and absolute tolerance.
        correct: reward of a right answer.
        wrong: reward of a wrong or missing one.
        normalize: ``exact`` mode: strip and collapse whitespace on both sides.
        ignore_case: ``exact`` mode: compare case-insensitively (``casefold``).
        name: name in logs (default ``answer_match``).

    Raises:
        ValueError: a bad mode, tolerance or ``extract`` pattern (at construction).
        RewardError: a row without ``field``, or whose reference is not text or a number, or (``numeric``) holds no
            number; the message names the source and the sample.
    """

    name = "answer_match"

    def __init__(
        self,
        field: str = "answer",
        mode: Literal["exact", "numeric"] = "exact",
        extract: str | None = None,
        tolerance: float = 1e-6,
        correct: float = 1.0,
        wrong: float = 0.0,
        normalize: bool = True,
        ignore_case: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if mode not in ("exact", "numeric"):
            raise ValueError(f"{self.name}: mode must be 'exact' or 'numeric', got {mode!r}")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"{self.name}: tolerance must be a finite number >= 0, got {tolerance}")
        self.field = field
        self.mode = mode
        self.extract = None if extract is None else _compile(extract, re.DOTALL, f"{self.name}: extract", groups=1)
        self.tolerance = tolerance
        self.correct = correct
        self.wrong = wrong
        self.normalize = normalize
        self.ignore_case = ignore_case

    def _text(self, text: str) -> str:
        if self.normalize:
            text = " ".join(text.split())
        return text.casefold() if self.ignore_case else text

    def _reference(self, row: dict[str, Any], index: int, prompt: str) -> str | float:
        where = f"{self.name}: sample {index} (prompt {prompt!r:.60})"
        if self.field not in row:
            raise RewardError(f"{where}: its row has no {self.field!r} field (fields: {sorted(map(str, row))})")
        value = row[self.field]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise RewardError(f"{where}: field {self.field!r} must be text or a number, got {type(value).__name__}")
        if self.mode == "exact":
            return self._text(str(value))
        number = float(value) if not isinstance(value, str) else parse_last_number(value)
        if number is None or not math.isfinite(number):
            raise RewardError(f"{where}: field {self.field!r} = {value!r:.60} holds no finite number to compare with")
        return number

    def is_correct(self, completion: str, reference: str | float) -> bool:
        """Whether one completion's answer matches a reference prepared by the row (text or number)."""
        answer = _extract_last(self.extract, completion)
        if answer is None:
            return False
        if self.mode == "exact":
            return self._text(answer) == reference
        value = parse_last_number(answer)
        return value is not None and math.isclose(value, reference, rel_tol=self.tolerance, abs_tol=self.tolerance)

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        rows: Sequence[dict[str, Any]],
        finished: Sequence[bool] | None = None,
    ) -> list[float]:
        rewards = []
        for i, (prompt, completion, row) in enumerate(zip(prompts, completions, rows)):
            reference = self._reference(row, i, prompt)
            rewards.append(self.correct if self.is_correct(completion, reference) else self.wrong)
        return rewards


class WeightedSumReward(RewardSource):
    """The weighted sum of several reward sources: ``sum_k weights[k] * sources[k](...)``.

    Each source is called (and checked) on its own, so an error names the source at fault. The unweighted values of
    the latest call stay in :attr:`last_components` for modules to log (``reward/<name>`` mean and std); a nested
    ``WeightedSumReward`` appears as one component, its total.

    Args:
        sources: the reward sources (``class_path`` entries in YAML), at least one.
        weights: one weight per source; ``null`` = all 1.
        name: name in logs (default ``weighted_sum``).

    Attributes:
        component_names: one name per source, unique: each source's ``name``, with ``_2``, ``_3``, ... added to
            repeats (two ``LengthReward`` sources are ``length`` and ``length_2``).
        last_components: ``{component name: (batch,) float32 CPU tensor}`` of the latest call, unweighted; empty
            before the first call.

    Raises:
        ValueError: no sources, a number of weights different from the number of sources, or a non-finite weight.
    """

    name = "weighted_sum"

    def __init__(
        self, sources: list[RewardSource], weights: list[float] | None = None, name: str | None = None
    ) -> None:
        super().__init__(name)
        if not sources:
            raise ValueError(f"{self.name}: needs at least one reward source")
        for i, source in enumerate(sources):
            if not isinstance(source, RewardSource):
                raise ValueError(f"{self.name}: source {i} is a {type(source).__name__}, not a RewardSource")
        weights = [1.0] * len(sources) if weights is None else [float(w) for w in weights]
        if len(weights) != len(sources):
            raise ValueError(f"{self.name}: got {len(weights)} weights for {len(sources)} sources")
        bad = [w for w in weights if not math.isfinite(w)]
        if bad:
            raise ValueError(f"{self.name}: weights must be finite numbers, got {weights}")
        self.sources = list(sources)
        self.weights = weights
        self.component_names = unique_names([source.name for source in self.sources])
        self.last_components: dict[str, torch.Tensor] = {}

    @property
    def last_stats(self) -> dict[str, float]:
        """The statistics its sources report about their latest call (e.g. an LLM judge's ``judge/parsed_rate``),
        merged, so that a module logs them through the sum as it would for the source alone."""
        merged: dict[str, float] = {}
        for source in self.sources:
            merged.update(getattr(source, "last_stats", None) or {})
        return merged

    def models(self) -> list[torch.nn.Module]:
        return [model for source in self.sources for model in source.models()]

    def to(self, device: torch.device | str) -> WeightedSumReward:
        """Move the sources that hold models (e.g. a reward model) to ``device``; rule sources have nothing to move."""
        for source in self.sources:
            if hasattr(source, "to"):
                source.to(device)
        return self

    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        rows: Sequence[dict[str, Any]],
        finished: Sequence[bool] | None = None,
    ) -> torch.Tensor:
        components = {
            name: source(prompts, completions, rows, finished)
            for name, source in zip(self.component_names, self.sources)
        }
        self.last_components = components
        total = torch.zeros(len(prompts), dtype=torch.float32)
        for weight, values in zip(self.weights, components.values()):
            total += weight * values
        return total


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with ``_2``, ``_3``, ... appended to repeats, never producing a name that is already in ``names``.

    Example: ``["length", "format", "length"]`` -> ``["length", "format", "length_2"]``; ``["a", "a", "a_2"]`` ->
    ``["a", "a_3", "a_2"]``.
    """
    originals = set(names)
    seen: set[str] = set()
    result = []
    for name in names:
        unique, n = name, 1
        while unique in seen or (unique != name and unique in originals):
            n += 1
            unique = f"{name}_{n}"
        seen.add(unique)
        result.append(unique)
    return result
