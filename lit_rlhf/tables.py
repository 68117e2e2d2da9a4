"""Text tables of samples for TensorBoard (markdown, which its text tab renders)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], max_cell: int = 300) -> str:
    """Render a markdown table; pipes and newlines in cells are escaped, long cells cut at ``max_cell``."""

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        if len(text) > max_cell:
            text = text[: max_cell - 1] + "…"
        return text.replace("|", "\\|").replace("\n", " ⏎ ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def log_text(loggers: Sequence[Any], tag: str, text: str, step: int) -> None:
    """Write ``text`` to every logger that can take text (TensorBoard's ``add_text``); others are skipped."""
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_text"):
            experiment.add_text(tag, text, global_step=step)
