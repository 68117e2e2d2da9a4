"""Anthropic's HH-RLHF (``Anthropic/hh-rlhf``): helpful and harmless dialogue pairs for SFT, reward models and PPO."""

from __future__ import annotations

from typing import Any

from lit_rlhf.data.mapped import MappedRowsDataModule, SkipRow, require_field
from lit_rlhf.data.tokenized import RowFormat

__all__ = ["HHRLHFDataModule", "split_last_assistant_turn"]

ASSISTANT = "\n\nAssistant:"
"""The marker that opens an assistant turn; the prompt ends right after the last one."""
HUMAN = "\n\nHuman:"
"""The marker that opens a human turn."""

SKIP_NO_ASSISTANT = "no assistant turn"
SKIP_PROMPTS_DIFFER = "chosen and rejected differ before the last assistant turn"
SKIP_IDENTICAL = "chosen and rejected are identical"

_HUB = {"train": "Anthropic/hh-rlhf", "val": "Anthropic/hh-rlhf", "val_split": "test"}


def split_last_assistant_turn(dialogue: str) -> tuple[str, str] | None:
    """Split an HH-RLHF dialogue into the prompt and the last assistant reply.

    Args:
        dialogue: a full transcript, ``"\\n\\nHuman: ...\\n\\nAssistant: ...[\\n\\nHuman: ...\\n\\nAssistant: ...]"``.

    Returns:
        ``(prompt, reply)``: ``prompt`` is everything up to and including the last ``"\\n\\nAssistant:"``, ``reply``
        the rest, as is (it keeps its leading space, e.g. ``" Sure, ..."``, and may be empty); ``None`` when the
        dialogue has no ``"\\n\\nAssistant:"``.
    """
    cut = dialogue.rfind(ASSISTANT)
    if cut < 0:
        return None
    cut += len(ASSISTANT)
    return dialogue[:cut], dialogue[cut:]


def _check_reply(reply: str, side: str) -> None:
    """Skip a reply that is empty or that a human turn follows (it would teach the policy to write the human)."""
    if not reply.strip():
        raise SkipRow(f"empty {side} reply")
    if HUMAN in reply:
        raise SkipRow(f"{side} ends with a human turn")


class HHRLHFDataModule(MappedRowsDataModule):
    """HH-RLHF (Bai et al. 2022, ``Anthropic/hh-rlhf``) for the three stages: rows ``{chosen, rejected}``, each a
    full dialogue ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, splits ``train`` and ``test``.

    Example YAML::

        data:
          class_path: lit_rlhf.data.hh_rlhf.HHRLHFDataModule
          init_args:
            format: preference        # sft | preference | prompt
            max_length: 1024

    The prompt is implicit: each dialogue is split at its *last* ``"\\n\\nAssistant:"`` (see
    :func:`split_last_assistant_turn`). The prompt is everything up to and including that marker in the chosen
    dialogue; the replies are the rest of each dialogue, leading space kept (``" Sure, ..."``). By format:

    - ``preference`` (RewardModule): ``{prompt, chosen, rejected}``.
    - ``sft`` (SFTModule): ``{prompt, response}`` with the chosen dialogue's last reply as ``response``.
    - ``prompt`` (PPOModule): ``{prompt}``, the chosen dialogue's prompt (not deduplicated).

    ``sft`` and ``prompt`` read only ``chosen``; ``preference`` reads both. A row whose field is missing or not a
    string stops loading with a :class:`~lit_rlhf.data.rows.DataError` naming the file (or hub split), the row and
    the field. Rows that are well-formed but unusable are skipped, and the count per reason is logged and kept in
    :attr:`skipped` (``{"train": {reason: count}, "val": {...}}``):

    - ``no assistant turn``: the dialogue has no ``"\\n\\nAssistant:"`` (all formats).
    - ``empty chosen reply`` / ``empty rejected reply``: the dialogue ends with ``"\\n\\nAssistant:"`` and nothing (or
      only whitespace) after it, which happens in the real data (``sft`` checks chosen, ``preference`` both).
    - ``chosen ends with a human turn`` / ``rejected ends with a human turn``: a ``"\\n\\nHuman:"`` follows the last
      assistant reply; as a target it would teach the policy to write the human's turn too.
    - ``chosen and rejected differ before the last assistant turn`` (``preference``): the two dialogues do not
      share the prompt, e.g. an earlier assistant turn differs, or one dialogue has an extra turn, which happens in
      the real data. Such a pair compares two conversations, not two replies to one prompt, so it is skipped rather
      than split at the longest common prefix (the ``PreferenceDataModule`` fallback with ``implicit_prompt``, which
      would give multi-turn "replies" that contain human turns).
    - ``chosen and rejected are identical`` (``preference``): equal replies (up to surrounding whitespace) teach
      nothing.

    The tokenizer's chat template is not applied by default (``use_chat_template: false``): the prompt already is
    a dialogue in HH's own ``Human:``/``Assistant:`` format and ends with ``"\\n\\nAssistant:"``, so the policy
    answers right after it and the reward model scores the same text it saw in training. Wrapping that transcript
    as one user message of a chat template would nest one dialogue format inside another.

    By default training reads the hub's ``train`` split and validation its ``test`` split (set ``train``/``val`` to
    read local files in the same schema instead). The hub repository has one configuration that concatenates the
    helpful and harmless subsets (``harmless-base``, ``helpful-base``, ``helpful-online``,
    ``helpful-rejection-sampled``); ``datasets`` selects one with ``load_dataset("Anthropic/hh-rlhf",
    data_dir="harmless-base")``, which ``config_name`` cannot express: pass ``data_dir: harmless-base`` (any
    file DataModule forwards ``data_dir`` to ``datasets.load_dataset``), or pass local copies of the subset's
    files as ``train`` and ``val``.

    The dataset card says these dialogues are meant for preference (reward) modelling, not for supervised
    training of dialogue agents. ``format: sft`` follows the common research practice (e.g. the DPO paper's HH
    experiments) of a short SFT on the chosen replies, so that the policy starts in the distribution the reward
    model was trained on; the chosen replies of the harmless subset can still be harmful.

    Args:
        format: ``preference`` (default), ``sft`` or ``prompt``.
        use_chat_template: wrap prompts in the tokenizer's chat template; ``False`` by default (see above).
        **kwargs: ``train``, ``val``, ``train_split``, ``val_split``, ``config_name``, ``max_train_rows``,
            ``max_val_rows`` (see :class:`~lit_rlhf.data.mapped.MappedRowsDataModule`) and the length, batch and
            worker options of :class:`~lit_rlhf.data.files.FileRowsDataModule`.
    """

    formats: tuple[RowFormat, ...] = ("sft", "preference", "prompt")
    sources = {"sft": _HUB, "preference": _HUB, "prompt": _HUB}

    def __init__(self, format: RowFormat = "preference", use_chat_template: bool | None = False, **kwargs: Any) -> None:
        super().__init__(format=format, use_chat_template=use_chat_template, **kwargs)

    def convert_row(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """Split one HH-RLHF row into ``{prompt, chosen, rejected}``, ``{prompt, response}`` or ``{prompt}``.

        Args:
            row: ``{"chosen": str, "rejected": str}`` (full dialogues).
            where: ``"<dataset> row <n>"`` for messages.

        Returns:
            The row for :attr:`format`.

        Raises:
            SkipRow: for the reasons listed in the class docstring.
            DataError: ``chosen`` (or, for ``preference``, ``rejected``) is missing or not a string.
        """
        chosen = require_field(row, "chosen", where)
        rejected = require_field(row, "rejected", where) if self.format == "preference" else None
        split = split_last_assistant_turn(chosen)
        if split is None:
            raise SkipRow(SKIP_NO_ASSISTANT)
        prompt, chosen_reply = split
        if self.format == "prompt":
            return {"prompt": prompt}
        _check_reply(chosen_reply, "chosen")
        if self.format == "sft":
            return {"prompt": prompt, "response": chosen_reply}
        split = split_last_assistant_turn(rejected)
        if split is None:
            raise SkipRow(SKIP_NO_ASSISTANT)
        if split[0] != prompt:
            raise SkipRow(SKIP_PROMPTS_DIFFER)
        rejected_reply = split[1]
        _check_reply(rejected_reply, "rejected")
        if chosen_reply.strip() == rejected_reply.strip():
            raise SkipRow(SKIP_IDENTICAL)
        return {"prompt": prompt, "chosen": chosen_reply, "rejected": rejected_reply}
