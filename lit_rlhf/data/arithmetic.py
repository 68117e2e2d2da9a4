"""The arithmetic-series task as a DataModule: generated in memory, no download."""

from __future__ import annotations

import random
from typing import Any, Literal

from lightning.pytorch.utilities import rank_zero_info

from lit_rlhf.data.arithmetic_labels import LabelSettings, load_or_label, summarize
from lit_rlhf.data.arithmetic_task import (
    CORRUPTIONS,
    NEAR_MISSES,
    ArithmeticProblem,
    exact_match,
    graded_score,
    split_problems,
    synthetic_pair,
)
from lit_rlhf.data.rows import RowSet
from lit_rlhf.data.tokenization import OverlongPolicy
from lit_rlhf.data.tokenized import RowFormat, TokenizedRowsDataModule

PairSource = Literal["synthetic", "labelled"]


def problem_row(problem: ArithmeticProblem) -> dict[str, Any]:
    """A row for ``problem``: ``prompt``, ``response`` (the reference series) and the verifier's fields."""
    return {
        "prompt": problem.prompt,
        "response": problem.answer,
        "answer": problem.answer,
        "start": problem.start,
        "difference": problem.difference,
        "num_terms": problem.num_terms,
    }


def synthetic_rows(
    problems: list[ArithmeticProblem], seed: int, kinds: tuple[str, ...] = CORRUPTIONS, pair_type: str = "synthetic"
) -> list[dict[str, Any]]:
    """One synthetic pair per problem: the correct series over a wrong one of a kind drawn from ``kinds``."""
    rng = random.Random(seed)
    return [
        {**synthetic_pair(p, rng, kinds), "answer": p.answer, "pair_type": pair_type, "chosen_correct": True}
        for p in problems
    ]


class ArithmeticDataModule(TokenizedRowsDataModule):
    """Arithmetic series: "make a series of arithmetic type which starts at 61 with 11 elements and 8 common
    difference value" -> "61 69 77 85 93".

    Held-out problems share no ``(start, difference, num_terms)`` with training ones, whatever the wording.
    Completions are checked by :meth:`score_completions` (``exact_match`` and ``graded_score``).

    ``format: preference`` serves pairs for the reward model, from one of two sources (``pairs``):

    - ``synthetic``: the correct series over a corrupted one (truncated, a wrong term, an inserted term), one
      pair per problem. Fast and label-free, but a reward model that only saw these is easy to exploit.
    - ``labelled`` (the pipeline's default): the SFT policy (``labeller_policy``) answers each prompt several
      times and the verifier ranks the answers, as a human annotator would (see
      :mod:`lit_rlhf.data.arithmetic_labels`). Labelled once, cached under ``pairs_cache_dir`` by the policy's
      identity, reused afterwards. ``synthetic_mix`` adds synthetic pairs to the training set.

    Validation pairs always include one synthetic pair per held-out problem (``pair_type`` ``synthetic``); with
    labelled pairs also the held-out labelled ones (``exact_vs_wrong``, ``partial_vs_worse``), so
    ``val/accuracy/<pair_type>`` shows both.

    Args:
        format: ``sft`` ({prompt, response} for the SFT module), ``preference`` (pairs for the reward model) or
            ``prompt`` (prompts with their ``answer`` etc. for PPO/GRPO and the verifier reward).
        pairs: ``synthetic`` or ``labelled`` (``format: preference`` only).
        labeller_policy: the SFT export that answers the prompts to label (``pairs: labelled``).
        samples_per_prompt: answers sampled per prompt for labelling.
        label_temperature: sampling temperature for labelling.
        reference_fraction: share of prompts whose reference answer joins the sampled candidates.
        pair_selection: ``correct_vs_wrong`` (each exactly right answer over each wrong one) or ``all_ranked``
            (also wrong over worse wrong, by partial credit; measured to hurt, see
            :mod:`~lit_rlhf.data.arithmetic_labels`).
        num_label_prompts: training prompts to label.
        synthetic_mix: synthetic training pairs added per labelled training pair (0 = none).
        synthetic_kinds: wrong answers of the synthetic training pairs, from ``CORRUPTIONS`` (``truncated``,
            ``wrong_term``, ``inserted_term``; the default) and ``NEAR_MISSES`` (``nudged_term``, ``shifted_tail``,
            ``wrong_difference``, ``one_more``, ``one_less``: hard negatives like a policy's own mistakes).
        pairs_cache_dir: folder of the labelled-pair cache.
        num_val: held-out problems (validation and evaluation).
        num_train: training problems; ``null`` = every remaining problem in all three wordings (~26k).
        max_length, max_prompt_length, overlong, batch_size, eval_batch_size, num_workers, seed, group_by_length,
            length_group_batches: see
            :class:`~lit_rlhf.data.tokenized.TokenizedRowsDataModule`. ``seed`` also fixes the train/held-out
            split and the labelling.
    """

    allow_empty_responses = True  # a sampled answer can be EOS alone; the reward model must see those too

    def __init__(
        self,
        format: RowFormat = "sft",
        pairs: PairSource = "synthetic",
        labeller_policy: str | None = None,
        samples_per_prompt: int = 4,
        label_temperature: float = 1.0,
        reference_fraction: float = 0.25,
        pair_selection: str = "correct_vs_wrong",
        num_label_prompts: int = 4096,
        synthetic_mix: float = 0.0,
        synthetic_kinds: list[str] | None = None,
        pairs_cache_dir: str = "runs/arithmetic/labelled_pairs",
        num_val: int = 512,
        num_train: int | None = None,
        max_length: int = 64,
        max_prompt_length: int | None = None,
        overlong: OverlongPolicy = "error",
        batch_size: int = 64,
        eval_batch_size: int | None = 256,
        num_workers: int = 0,
        seed: int = 1234,
        group_by_length: bool = False,
        length_group_batches: int = 50,
    ) -> None:
        super().__init__(
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            overlong=overlong,
            use_chat_template=False,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            seed=seed,
            group_by_length=group_by_length,
            length_group_batches=length_group_batches,
        )
        if format not in ("sft", "preference", "prompt"):
            raise ValueError(f"format must be 'sft', 'preference' or 'prompt', got {format!r}")
        if pairs not in ("synthetic", "labelled"):
            raise ValueError(f"pairs must be 'synthetic' or 'labelled', got {pairs!r}")
        if format == "preference" and pairs == "labelled" and not labeller_policy:
            raise ValueError("pairs: labelled needs labeller_policy, the SFT export to sample from")
        if synthetic_mix < 0:
            raise ValueError(f"synthetic_mix must be >= 0, got {synthetic_mix}")
        kinds = tuple(synthetic_kinds or CORRUPTIONS)
        unknown = sorted(set(kinds) - set(CORRUPTIONS) - set(NEAR_MISSES))
        if unknown:
            raise ValueError(f"unknown synthetic_kinds {unknown}; choose from {CORRUPTIONS + NEAR_MISSES}")
        self.synthetic_kinds = kinds
        self.row_format = format
        self.format = format
        self.pairs = pairs
        self.labeller_policy = labeller_policy
        self.label_settings = LabelSettings(
            samples_per_prompt=samples_per_prompt,
            temperature=label_temperature,
            max_new_tokens=20,
            reference_fraction=reference_fraction,
            num_train_prompts=num_label_prompts,
            num_val=num_val,
            seed=seed,
            pair_selection=pair_selection,
        )
        self.synthetic_mix = synthetic_mix
        self.pairs_cache_dir = pairs_cache_dir
        self.num_val = num_val
        self.num_train = num_train

    @property
    def labelled(self) -> bool:
        return self.format == "preference" and self.pairs == "labelled"

    def prepare_data(self) -> None:
        """Label the pairs once (rank 0) so that every rank's :meth:`setup` reads them from the cache."""
        if self.labelled:
            rows, path = load_or_label(self.labeller_policy, self.label_settings, self.pairs_cache_dir)
            rank_zero_info(f"labelled pairs: {path} ({summarize(rows)})")

    def load_rows(self) -> dict[str, RowSet]:
        train, val = split_problems(self.num_val, self.num_train, self.seed)
        if self.format in ("sft", "prompt"):
            return {
                "train": RowSet.numbered("arithmetic[train]", [problem_row(p) for p in train]),
                "val": RowSet.numbered("arithmetic[held-out]", [problem_row(p) for p in val]),
            }
        val_rows = synthetic_rows(val, self.seed + 1) + synthetic_rows(val, self.seed + 2, NEAR_MISSES, "near_miss")
        if not self.labelled:
            train_rows = synthetic_rows(train, self.seed, self.synthetic_kinds)
            return {
                "train": RowSet.numbered("arithmetic synthetic pairs[train]", train_rows),
                "val": RowSet.numbered("arithmetic synthetic pairs[held-out]", val_rows),
            }
        rows, path = load_or_label(self.labeller_policy, self.label_settings, self.pairs_cache_dir)
        train_rows = [r for r in rows if r["split"] == "train"]
        if self.synthetic_mix:
            synthetic = synthetic_rows(train, self.seed, self.synthetic_kinds)
            train_rows += synthetic[: round(self.synthetic_mix * len(train_rows))]
        return {
            "train": RowSet.numbered(f"{path}[train]", train_rows),
            "val": RowSet.numbered(f"{path}[held-out]", [r for r in rows if r["split"] == "val"] + val_rows),
        }

    def normalization_dataloader(self) -> Any:
        """With labelled pairs, only the held-out labelled ones (the SFT model's samples and references)."""
        if not self.labelled:
            return super().normalization_dataloader()
        sampled = [ex for ex in self.val_dataset if ex["row"]["pair_type"] not in ("synthetic", "near_miss")]
        return self._eval_loader(sampled or self.val_dataset, self._collator(validation=True))

    def score_completions(self, completions: list[str], rows: list[dict[str, Any]]) -> dict[str, list[float]]:
        """``exact_match`` (0/1) and ``graded_score`` (in [0, 1]) of each completion against its row's answer."""
        answers = [row["answer"] for row in rows]
        return {
            "exact_match": [exact_match(c, a) for c, a in zip(completions, answers)],
            "graded_score": [graded_score(c, a) for c, a in zip(completions, answers)],
        }
