"""TL;DR summarisation (Stiennon et al. 2020), as prepared in "The N+ Implementation Details of RLHF with PPO: A Case
Study on TL;DR Summarization" (Huang et al. 2024): reference summaries for SFT and PPO prompts, human comparisons for
the reward model, all with the same query format."""

from __future__ import annotations

import re
from typing import Any

from lightning.pytorch.utilities import rank_zero_info
from transformers import PreTrainedTokenizerBase

from lit_rlhf.data.mapped import MappedRowsDataModule, SkipRow, require_field
from lit_rlhf.data.rows import DataError, RowSet
from lit_rlhf.data.tokenized import RowFormat

__all__ = ["TLDR_QUERY_FORMAT", "TLDRDataModule", "format_tldr_query"]

TLDR_QUERY_FORMAT = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"
"""The query of every stage (OpenAI's ``summarize-from-feedback`` format, kept by the N+ details)."""

SFT_SOURCE = "vwxyzjn/summarize_from_feedback_tldr_3_filtered"
"""Reddit TL;DR posts with one reference summary each (columns ``id, subreddit, title, post, summary``; splits
``train`` 116,722 / ``validation`` 6,447 / ``test`` 6,553 rows), the SFT and PPO data of the N+ details."""

COMPARISONS_SOURCE = "openai/summarize_from_feedback"
"""Human comparisons of two summaries (configuration ``comparisons``; splits ``train`` / ``validation``); the
validation split also holds CNN/DailyMail articles, which have no reddit post."""

RESPONSE_BUDGET = {"sft": 53, "preference": 169, "prompt": 53}
"""Response tokens (EOS included) after the query, per format, from the N+ details (Pythia tokenizer): reference
summaries are cut at 53 tokens, compared summaries at 169, and PPO samples 53 tokens."""

_WHITESPACE = re.compile(r"\s+")


def format_tldr_query(
    subreddit: str,
    title: str,
    post: str,
    tokenizer: PreTrainedTokenizerBase,
    max_query_length: int = 512,
) -> tuple[str, bool]:
    """The TL;DR query of one post, with the post cut from the end at a whitespace boundary until it fits.

    The three fields are stripped, then formatted with :data:`TLDR_QUERY_FORMAT`. When the query has more than
    ``max_query_length`` tokens (counted as the model will see it: ``tokenizer(query)["input_ids"]``, so with any
    special tokens the tokenizer adds), the post is replaced by its longest prefix that ends before a whitespace run
    (so no word is cut) and makes the query fit; the query still ends with ``"\\n\\nTL;DR:"``. This follows the N+
    details and OpenAI's ``process_query``, which also shorten only the post, from its end, and re-tokenise the whole
    query after each cut. They cut at the last newline (whole paragraphs, then single characters when no newline is
    left); cutting at the last whitespace keeps more of the post and never splits a word. The prefix is found by
    bisection over the whitespace positions (about ``log2(words)`` tokenisations, not one per word): it always fits,
    and it is the longest one that does as long as the token count grows with the prefix (BPE merges across the cut
    can break that only by a token or so).

    Args:
        subreddit: the subreddit name without ``r/``.
        title: the post's title.
        post: the post's body.
        tokenizer: the model's tokenizer (only its token count is used).
        max_query_length: the most tokens the query may have.

    Returns:
        ``(query, truncated)``: the query, and whether the post was cut.

    Raises:
        ValueError: even the query with an empty post has more than ``max_query_length`` tokens.
    """
    subreddit, title, post = subreddit.strip(), title.strip(), post.strip()

    def build(body: str) -> str:
        return TLDR_QUERY_FORMAT.format(subreddit=subreddit, title=title, post=body)

    def fits(body: str) -> bool:
        return len(tokenizer(build(body))["input_ids"]) <= max_query_length

    if fits(post):
        return build(post), False
    if not fits(""):
        raise ValueError(
            f"the query has {len(tokenizer(build(''))['input_ids'])} tokens > max_query_length {max_query_length} "
            "even with an empty post"
        )
    # cuts[i] is the length of a prefix that ends right before a whitespace run (0: the empty post, which fits; the
    # full post, which does not, lies beyond the last cut). Bisect for the longest prefix that fits.
    cuts = [0] + [match.start() for match in _WHITESPACE.finditer(post)]
    low, high = 0, len(cuts) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if fits(post[: cuts[middle]]):
            low = middle
        else:
            high = middle - 1
    return build(post[: cuts[low]]), True


class TLDRDataModule(MappedRowsDataModule):
    """The TL;DR summarisation task for the three stages, as in the N+ implementation details.

    - ``format: sft`` (:class:`~lit_rlhf.modules.SFTModule`): rows of :data:`SFT_SOURCE`; prompt = the query
      (:func:`format_tldr_query`), response = ``" " + summary``.
    - ``format: preference`` (:class:`~lit_rlhf.modules.RewardModule`): rows of :data:`COMPARISONS_SOURCE`
      (configuration ``comparisons``); prompt = the query of ``info``, chosen = ``summaries[choice].text``, rejected
      = the other summary. Comparisons of two identical summaries and CNN/DailyMail rows (``info.post`` is null; their
      article would need another query format and length) are skipped and counted.
    - ``format: prompt`` (:class:`~lit_rlhf.modules.PPOModule`): the queries of :data:`SFT_SOURCE`, each row with
      ``reference`` (the human summary, for reward functions such as ROUGE and for sample tables) and ``id``.

    Responses start with one space: the query ends with ``"TL;DR:"`` and the summary follows after a space, so
    the first word is tokenised as in running text (``" The"``, one BPE token, not ``"The"``). The N+ details add
    this space to the SFT summaries, which have none, and keep the comparison summaries as they are, since those
    already start with one; here every summary is stripped and given exactly one leading space, so SFT targets,
    compared summaries and the policy's own samples all begin the same way. EOS is appended by the tokenisation.

    Every query is built with the model's tokenizer to fit ``max_query_length`` tokens; how many posts were cut to
    fit is logged per split and kept in :attr:`queries_truncated`. ``max_prompt_length`` is ``max_query_length``,
    and ``max_length`` defaults to ``max_query_length`` plus the response budget of the N+ details (53 tokens for
    SFT and PPO, 169 for compared summaries); longer responses follow ``overlong`` (default: truncated, counted).

    Example YAML::

        data:
          class_path: lit_rlhf.data.tldr.TLDRDataModule
          init_args:
            format: preference               # sft | preference | prompt
            max_query_length: 512
            batch_size: 8

    Args:
        format: ``sft``, ``preference`` or ``prompt`` (see above).
        train: a jsonl/json/parquet/csv file in the source's schema, or a ``datasets`` name; ``None`` = the default
            source of ``format`` (:data:`SFT_SOURCE` or :data:`COMPARISONS_SOURCE`).
        val: validation file or name; with the default source, its ``validation`` split. With a ``train`` file and
            no ``val``, ``val_fraction`` of ``train`` is held out.
        train_split, val_split, config_name: ``datasets`` split and configuration names (``None`` = the default).
        max_train_rows, max_val_rows: keep only this many rows of each split (after skipping), a seeded random subset.
        max_query_length: the most tokens of a query (the post is cut to fit).
        max_length: the most tokens of query + response; ``None`` = ``max_query_length`` + 53 (``sft``, ``prompt``)
            or + 169 (``preference``).
        use_chat_template: ``False`` (default): the raw query, as in the N+ details, even with an instruct
            tokenizer. With a chat template or a ``system_prompt`` the prompt has more tokens than the query, which
            ``max_query_length`` does not count.
        **kwargs: the rest of :class:`~lit_rlhf.data.files.FileRowsDataModule` (``val_fraction``, ``overlong``,
            ``batch_size``, ``eval_batch_size``, ``num_workers``, ``seed``, ``columns``, ...).
    """

    formats = ("sft", "preference", "prompt")
    sources = {
        "sft": {"train": SFT_SOURCE, "val": SFT_SOURCE, "val_split": "validation"},
        "prompt": {"train": SFT_SOURCE, "val": SFT_SOURCE, "val_split": "validation"},
        "preference": {
            "train": COMPARISONS_SOURCE,
            "val": COMPARISONS_SOURCE,
            "config_name": "comparisons",
            "val_split": "validation",
        },
    }

    def __init__(
        self,
        format: RowFormat = "sft",
        train: str | None = None,
        val: str | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        config_name: str | None = None,
        max_train_rows: int | None = None,
        max_val_rows: int | None = None,
        max_query_length: int = 512,
        max_length: int | None = None,
        use_chat_template: bool | None = False,
        **kwargs: Any,
    ) -> None:
        if "max_prompt_length" in kwargs:
            raise ValueError("TLDRDataModule: set max_query_length, not max_prompt_length (it is max_query_length)")
        if max_query_length < 1:
            raise ValueError(f"max_query_length must be >= 1, got {max_query_length}")
        if max_length is None:
            max_length = max_query_length + RESPONSE_BUDGET.get(format, RESPONSE_BUDGET["sft"])
        if max_length <= max_query_length:
            raise ValueError(f"max_length ({max_length}) must exceed max_query_length ({max_query_length})")
        super().__init__(
            format=format,
            train=train,
            val=val,
            train_split=train_split,
            val_split=val_split,
            config_name=config_name,
            max_train_rows=max_train_rows,
            max_val_rows=max_val_rows,
            max_length=max_length,
            max_prompt_length=max_query_length,
            use_chat_template=use_chat_template,
            **kwargs,
        )
        self.max_query_length = max_query_length
        self.queries_truncated: dict[str, int] = {}

    def query(self, subreddit: str, title: str, post: str) -> tuple[str, bool]:
        """:func:`format_tldr_query` with the model's tokenizer and :attr:`max_query_length`.

        Raises:
            SkipRow: the query does not fit even with an empty post.
        """
        try:
            return format_tldr_query(subreddit, title, post, self._require_tokenizer(), self.max_query_length)
        except DataError:
            raise  # no tokenizer: not a reason to skip a row
        except ValueError as err:
            raise SkipRow(f"query over max_query_length={self.max_query_length} even with an empty post") from err

    def convert_row(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        """Map one TL;DR row to ``{prompt, response}``, ``{prompt, chosen, rejected}`` or ``{prompt, reference}``.

        Each row also gets ``query_truncated`` (removed again by :meth:`load_rows`, which counts it) and ``id``
        when the source row has one.

        Raises:
            SkipRow: identical summaries, a news article instead of a post, or a query too long even without post.
            DataError: naming the dataset, the row and the field (e.g. ``'info.title'``, ``'choice'``).
        """
        if self.format == "preference":
            return self._convert_comparison(row, where)
        fields = [require_field(row, name, where) for name in ("subreddit", "title", "post")]
        summary = require_field(row, "summary", where)
        if not summary.strip():
            raise DataError(f"{where}: field 'summary' is empty")
        query, truncated = self.query(*fields)
        mapped: dict[str, Any] = {"prompt": query, "query_truncated": truncated}
        if self.format == "sft":
            mapped["response"] = " " + summary.strip()
        else:
            mapped["reference"] = summary.strip()
        if isinstance(row.get("id"), str):
            mapped["id"] = row["id"]
        return mapped

    def _convert_comparison(self, row: dict[str, Any], where: str) -> dict[str, Any]:
        info = require_field(row, "info", where, dict)
        if info.get("post") is None and isinstance(info.get("article"), str):
            raise SkipRow("no post (news article)")
        fields = [require_field(row, f"info.{name}", where) for name in ("subreddit", "title", "post")]
        summaries = require_field(row, "summaries", where, list)
        if len(summaries) != 2:
            raise DataError(f"{where}: field 'summaries' must hold 2 summaries, got {len(summaries)}")
        texts = []
        for i, summary in enumerate(summaries):
            if not isinstance(summary, dict):
                raise DataError(f"{where}: field 'summaries[{i}]' must be dict, got {type(summary).__name__}")
            texts.append(require_field(summary, "text", f"{where}: summaries[{i}]").strip())
        choice = require_field(row, "choice", where, int)
        if isinstance(choice, bool) or choice not in (0, 1):
            raise DataError(f"{where}: field 'choice' must be 0 or 1, got {choice!r}")
        if texts[0] == texts[1]:
            raise SkipRow("identical summaries")
        query, truncated = self.query(*fields)
        mapped: dict[str, Any] = {
            "prompt": query,
            "chosen": " " + texts[choice],
            "rejected": " " + texts[1 - choice],
            "query_truncated": truncated,
        }
        if isinstance(info.get("id"), str):
            mapped["id"] = info["id"]
        return mapped

    def load_rows(self) -> dict[str, RowSet]:
        """The mapped rows per split; counts (and logs) the queries whose post was cut to fit."""
        rowsets = super().load_rows()
        for split, rowset in rowsets.items():
            truncated = sum(bool(row.pop("query_truncated", False)) for row in rowset.rows)
            self.queries_truncated[split] = truncated
            rank_zero_info(
                f"[{split}] {rowset.dataset}: {truncated} of {len(rowset)} queries truncated (post cut at a whitespace "
                f"to fit max_query_length={self.max_query_length} tokens)"
            )
        return rowsets
