"""The user-facing text describes the product, not how it was built.

README.md, docs/, configs/ and the package's docstrings and comments must hold no development history: no issue
numbers, no sessions or lent machines, no "seed notebooks" (a dataset is named by its task and source), no "used
until", and no dates except beside the measured figures of docs/benchmarks.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# (name, pattern): all case-insensitive, with word boundaries so that e.g. "talent", "silently", "equivalent" or
# "random seed" never match.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (name, re.compile(pattern, re.IGNORECASE))
    for name, pattern in [
        ("issue number", r"\b(?:issues?|PR|pull request) ?#?\d+\b"),
        ("issue reference", r"\(issues?\b"),
        # "session" of a library class (``requests.Session``, ``tf.Session``) is an attribute, never history: a
        # word glued to a dot before it is allowed (and ``InferenceSession`` has no word boundary).
        ("session", r"(?<![.\w])sessions?\b"),
        ("seed notebook", r"\bseed[ -]?notebooks?\b"),
        # Seeds of the project's origin are numbered 000, 001, ...: "seed 004", "seeds 000-003". A random seed
        # ("seed 0", "seed 42", "--data_seed 1") has no leading zero; "seed 1's" (a possessive) still counts.
        ("seed number", r"\bseeds? 0\d\d\b|\bseed \d+'s\b"),
        ("lent", r"\blent\b"),
        ("used until", r"\bused until\b"),
        ("in earlier", r"\bin earlier\b"),
        ("earlier session", r"\bearlier (?:session|run|version)s?\b"),
        ("not yet gain", r"\bnot yet gain"),
        ("we tried", r"\bwe tried\b"),
    ]
]
DATE = re.compile(r"(?<![\d-])\d{4}-\d{2}-\d{2}(?![\d-])")
DATES_ALLOWED = {"docs/benchmarks.md"}  # measured figures carry the date they were measured on


def checked_files() -> list[Path]:
    """README.md, docs/**/*.md, configs/**/*.yaml and lit_rlhf/**/*.py, sorted."""
    files = [ROOT / "README.md"]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted(p for ext in ("*.yaml", "*.yml") for p in (ROOT / "configs").rglob(ext))
    files += sorted((ROOT / "lit_rlhf").rglob("*.py"))
    return [p for p in files if p.is_file()]


def hits(relative: str, text: str) -> list[str]:
    """``file:line: [pattern] text`` for every line of ``text`` with a development-history word."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        names = [name for name, pattern in PATTERNS if pattern.search(line)]
        if relative not in DATES_ALLOWED and DATE.search(line):
            names.append("date")
        if names:
            found.append(f"{relative}:{number}: [{', '.join(names)}] {line.strip()[:160]}")
    return found


@pytest.mark.parametrize(
    "text",
    [
        "PPO does not yet gain the 10 points issue 5 asks for",
        "see (issue 12)",
        "as issue #7 found",
        "in earlier sessions the packed runs ended lower",
        "measured in the same session",
        "the task of seed 004",
        "seed 000's data",
        "seeds 000-003",
        "Datasets of the seed notebooks",
        "on one lent H200",
        "the reward model used until the new one",
        "a run on 2026-12-03",
    ],
)
def test_patterns_catch_history(text: str) -> None:
    assert hits("README.md", text), text


@pytest.mark.parametrize(
    "text",
    [
        "a row is never dropped silently",
        "talent, equivalent, prevalent",
        "the random seed of the data split: --data_seed 1, seed_everything: 0, seed 42",
        "requests.Session() and onnxruntime.InferenceSession",
        "the export of an earlier stage",
        "Issues and pull requests are welcome",
        "``2024-05`` is 5",
        "Stiennon et al. 2020",
    ],
)
def test_patterns_leave_product_text(text: str) -> None:
    assert not hits("lit_rlhf/x.py", text), text


def test_dates_allowed_in_benchmarks_only() -> None:
    assert not hits("docs/benchmarks.md", "| 2026-12-04 | H100 | 1.40x |")
    assert hits("docs/sft.md", "| 2026-12-04 | H100 | 1.40x |")


def test_no_development_history_in_user_text() -> None:
    """Every hit, as ``file:line: [pattern] text``: reword it for a user (what the product does, with its figure and
    machine in docs/benchmarks.md), or name the dataset by its task and source."""
    files = checked_files()
    assert any(p.name == "README.md" for p in files) and len(files) > 10, "the checked files were not found"
    found = [hit for path in files for hit in hits(path.relative_to(ROOT).as_posix(), path.read_text("utf-8"))]
    assert not found, f"{len(found)} lines with development history:\n" + "\n".join(found)
