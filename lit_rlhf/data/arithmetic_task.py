"""The arithmetic-series task (embedded, generated in memory): prompts, reference answers and the verifier.

A problem is ``(start, difference, num_terms)``; the answer lists the terms ``start + i * difference`` for
``i < num_terms``, stopping before the first term above :data:`MAX_VALUE`. The prompt is one of three fixed
English templates, e.g. ``"make a series of arithmetic type which starts at 61 with 11 elements and 8 common
difference value"`` with answer ``"61 69 77 85 93"``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MAX_VALUE = 100
START_RANGE = range(0, 100)
DIFFERENCE_RANGE = range(1, 10)
NUM_TERMS_RANGE = range(5, 15)

TEMPLATES = (
    "generate an arithmetic series with {n} terms starting with value {s} and common difference {d}",
    "make a series of arithmetic type which starts at {s} with {n} elements and {d} common difference value",
    "Let {n} be the number of terms {s} the starting number and {d} the common difference then write the "
    "arithmetic series",
)


@dataclass(frozen=True)
class ArithmeticProblem:
    """One arithmetic-series problem.

    Attributes:
        start: first term, in ``START_RANGE``.
        difference: common difference, in ``DIFFERENCE_RANGE``.
        num_terms: requested number of terms, in ``NUM_TERMS_RANGE``.
        template: index into :data:`TEMPLATES`.
    """

    start: int
    difference: int
    num_terms: int
    template: int = 0

    @property
    def prompt(self) -> str:
        return TEMPLATES[self.template].format(s=self.start, d=self.difference, n=self.num_terms)

    @property
    def terms(self) -> list[int]:
        return arithmetic_series(self.start, self.difference, self.num_terms)

    @property
    def answer(self) -> str:
        return " ".join(str(v) for v in self.terms)

    @property
    def key(self) -> tuple[int, int, int]:
        """The problem without its wording: held-out splits are made on this."""
        return (self.start, self.difference, self.num_terms)


def arithmetic_series(start: int, difference: int, num_terms: int, max_value: int = MAX_VALUE) -> list[int]:
    """Terms of the series, stopping before the first one above ``max_value``."""
    terms = []
    for i in range(num_terms):
        value = start + i * difference
        if value > max_value:
            break
        terms.append(value)
    return terms


def all_problem_keys() -> list[tuple[int, int, int]]:
    """Every ``(start, difference, num_terms)`` of the task: 100 * 9 * 10 = 9000 keys."""
    return [(s, d, n) for s in START_RANGE for d in DIFFERENCE_RANGE for n in NUM_TERMS_RANGE]


def split_problems(
    num_val: int, num_train: int | None, seed: int
) -> tuple[list[ArithmeticProblem], list[ArithmeticProblem]]:
    """Deterministic train/held-out split: validation problems share no ``(s, d, n)`` with training ones.

    Args:
        num_val: number of held-out problems (each a distinct key, random template).
        num_train: number of training problems drawn from the remaining keys x templates; ``None`` takes all of
            them (about 26k for ``num_val=512``).
        seed: seed of the split; the same seed always gives the same split.

    Returns:
        ``(train, val)`` lists of problems.
    """
    rng = random.Random(seed)
    keys = all_problem_keys()
    rng.shuffle(keys)
    if not 0 < num_val < len(keys):
        raise ValueError(f"num_val must be in [1, {len(keys) - 1}], got {num_val}")
    val = [ArithmeticProblem(*key, template=rng.randrange(len(TEMPLATES))) for key in keys[:num_val]]
    train = [ArithmeticProblem(*key, template=t) for key in keys[num_val:] for t in range(len(TEMPLATES))]
    rng.shuffle(train)
    if num_train is not None:
        if num_train < 1:
            raise ValueError(f"num_train must be positive or null, got {num_train}")
        train = train[:num_train]
    return train, val


def parse_terms(text: str) -> list[int] | None:
    """Integers of a whitespace-separated completion, or ``None`` if any word is not an integer."""
    words = text.split()
    try:
        return [int(w) for w in words]
    except ValueError:
        return None


def exact_match(completion: str, answer: str) -> float:
    """1.0 if the completion lists exactly the reference terms (whitespace-insensitive), else 0.0."""
    return float(completion.split() == answer.split())


def graded_score(completion: str, answer: str) -> float:
    """Partial credit in [0, 1]: reference terms reproduced at their position, over the longer length.

    A completion with a non-integer word scores 0. Example: reference ``"1 3 5 7"`` and completion ``"1 3 6"``:
    two positions right out of ``max(4, 3) = 4`` gives 0.5.
    """
    got = parse_terms(completion)
    want = [int(w) for w in answer.split()]
    if got is None or not want:
        return 0.0
    right = sum(a == b for a, b in zip(got, want))
    return right / max(len(got), len(want))


def vocabulary() -> list[str]:
    """Every word the task can produce (template words and the integers 0..MAX_VALUE), in a fixed order."""
    words: list[str] = []
    for template in TEMPLATES:
        for word in template.split():
            if not word.startswith("{") and word not in words:
                words.append(word)
    return words + [str(i) for i in range(MAX_VALUE + 1)]


CORRUPTIONS = ("truncated", "wrong_term", "inserted_term")
"""How a synthetic rejected answer differs from the correct series."""


def corrupt_terms(terms: list[int], kind: str, rng: random.Random) -> list[int]:
    """A wrong version of ``terms`` (never equal to it).

    Args:
        terms: the correct series (at least one term).
        kind: ``truncated`` (drop 1 or more trailing terms, keeping at least one; a one-term series gets a wrong
            term instead), ``wrong_term`` (one term replaced by another value in [0, MAX_VALUE]) or
            ``inserted_term`` (one extra value inserted at a random position).
        rng: source of randomness.

    Returns:
        The corrupted list of terms.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")
    if kind == "truncated" and len(terms) > 1:
        return terms[: rng.randrange(1, len(terms))]
    if kind == "inserted_term":
        position = rng.randrange(len(terms) + 1)
        return terms[:position] + [rng.randrange(MAX_VALUE + 1)] + terms[position:]
    position = rng.randrange(len(terms))
    value = rng.choice([v for v in range(MAX_VALUE + 1) if v != terms[position]])
    return terms[:position] + [value] + terms[position + 1 :]


NEAR_MISSES = ("nudged_term", "shifted_tail", "wrong_difference", "one_more", "one_less")
"""Hard negatives that look like a trained policy's own mistakes rather than random noise: one term off by 1 or 2
(``nudged_term``), every term from some position on shifted by 1 or 2 (``shifted_tail``), the series of a
difference off by one (``wrong_difference``), one term too many, ignoring the cap (``one_more``), or one too few
(``one_less``)."""


def near_miss_terms(problem: ArithmeticProblem, kind: str, rng: random.Random) -> list[int]:
    """A near-miss wrong answer to ``problem`` (never equal to the correct terms).

    Args:
        problem: the problem.
        kind: one of :data:`NEAR_MISSES`.
        rng: source of randomness.

    Returns:
        The wrong list of terms.
    """
    if kind not in NEAR_MISSES:
        raise ValueError(f"unknown near miss {kind!r}; expected one of {NEAR_MISSES}")
    terms = problem.terms
    delta = rng.choice((-2, -1, 1, 2))
    if kind == "shifted_tail" and len(terms) > 1:
        k = rng.randrange(1, len(terms))
        wrong = terms[:k] + [max(0, t + delta) for t in terms[k:]]
    elif kind == "wrong_difference":
        step = problem.difference + rng.choice((-1, 1))
        wrong = arithmetic_series(problem.start, step, problem.num_terms)
    elif kind == "one_more":
        wrong = terms + [terms[-1] + problem.difference]
    elif kind == "one_less" and len(terms) > 1:
        wrong = terms[:-1]
    else:  # nudged_term, or a one-term series that cannot be shifted or shortened
        k = rng.randrange(len(terms))
        wrong = terms[:k] + [abs(terms[k] + delta)] + terms[k + 1 :]
    if wrong == terms:  # e.g. max(0, ...) undid a shift: nudge one term instead
        k = rng.randrange(len(terms))
        wrong = terms[:k] + [terms[k] + 1] + terms[k + 1 :]
    return wrong


def synthetic_pair(
    problem: ArithmeticProblem, rng: random.Random, kinds: tuple[str, ...] = CORRUPTIONS
) -> dict[str, str]:
    """A preference row: the correct series chosen over a wrong one of a kind picked from ``kinds``.

    Args:
        problem: the problem.
        rng: source of randomness.
        kinds: names from :data:`CORRUPTIONS` and :data:`NEAR_MISSES`.
    """
    kind = rng.choice(kinds)
    if kind in NEAR_MISSES:
        rejected = near_miss_terms(problem, kind, rng)
    else:
        rejected = corrupt_terms(problem.terms, kind, rng)
    return {
        "prompt": problem.prompt,
        "chosen": problem.answer,
        "rejected": " ".join(str(v) for v in rejected),
        "corruption": kind,
    }
