"""Labelled preference pairs for the arithmetic task: the SFT policy answers, the verifier plays the annotator.

As in real RLHF, the pairs the reward model learns from are the policy's own responses ranked by a judge. Here the
judge is the task's verifier: for each prompt, draw ``samples_per_prompt`` responses from the SFT model, add the
reference answer for a share of prompts, and pair the distinct responses by the verifier's judgement: by default
each exactly right response with each wrong one (``pair_selection: correct_vs_wrong``); ``all_ranked`` also pairs
two wrong responses ranked by :func:`graded_score` (partial credit). Ties are dropped.

Measured on the 82% SFT model: adding the wrong-vs-wrong pairs (about 55% of all pairs) left a reward model at
chance on held-out right-vs-wrong pairs after 600 steps, while right-vs-wrong pairs alone reached 76%. Partial
credit between two wrong series is a weak, noisy signal that drowns the one that matters.

Labelling is cached in a jsonl file whose name is a digest of the policy's weights and of every labelling
setting, so a second run (or the resumed run) reuses it and a retrained SFT model gets new labels.

    lit-rlhf label --policy runs/arithmetic/sft/hf     # label now, print the cache path
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lit_rlhf.data.arithmetic_task import ArithmeticProblem, exact_match, graded_score, split_problems
from lit_rlhf.data.rows import DataError
from lit_rlhf.generation import responses_in_batches

log = logging.getLogger(__name__)

LABEL_FORMAT_VERSION = 2
"""Bump when the labelling procedure changes, so old caches are not reused."""

PAIR_SELECTIONS = ("correct_vs_wrong", "all_ranked")


@dataclass(frozen=True)
class LabelSettings:
    """Everything that decides the labelled pairs (and so the cache file name).

    Attributes:
        samples_per_prompt: responses drawn from the policy per prompt.
        temperature: sampling temperature (1.0: the policy's own distribution).
        max_new_tokens: generation length.
        reference_fraction: share of prompts whose reference answer joins the candidates.
        num_train_prompts: training problems labelled (the first ones of the seeded training order).
        num_val: held-out problems (all are labelled for validation), as in the DataModule.
        seed: the DataModule seed: fixes the split, the sampling and the reference draw.
        pair_selection: ``correct_vs_wrong`` (each exactly right response over each wrong one) or ``all_ranked``
            (also wrong over worse wrong, by partial credit).
    """

    samples_per_prompt: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 20
    reference_fraction: float = 0.25
    num_train_prompts: int = 4096
    num_val: int = 512
    seed: int = 1234
    pair_selection: str = "correct_vs_wrong"

    def __post_init__(self) -> None:
        if self.pair_selection not in PAIR_SELECTIONS:
            raise ValueError(f"pair_selection must be one of {PAIR_SELECTIONS}, got {self.pair_selection!r}")


def policy_digest(policy_dir: str) -> str:
    """SHA-256 over the policy folder's weights, config and tokenizer files (its identity for the cache)."""
    patterns = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json")
    files = sorted({path for pattern in patterns for path in glob.glob(os.path.join(policy_dir, pattern))})
    if not any(path.endswith((".safetensors", ".bin")) for path in files):
        raise FileNotFoundError(f"{policy_dir} holds no model weights (*.safetensors or *.bin); train the SFT first")
    digest = hashlib.sha256()
    for path in files:
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def cache_path(cache_dir: str, policy_dir: str, settings: LabelSettings) -> str:
    """Where the labelled pairs of ``policy_dir`` under ``settings`` are cached."""
    key = json.dumps(
        {"version": LABEL_FORMAT_VERSION, "policy": policy_digest(policy_dir), **asdict(settings)}, sort_keys=True
    )
    return os.path.join(cache_dir, f"arithmetic-labelled-{hashlib.sha256(key.encode()).hexdigest()[:16]}.jsonl")


def rank_pairs(
    problem: ArithmeticProblem, candidates: Sequence[str], split: str, selection: str = "correct_vs_wrong"
) -> list[dict[str, Any]]:
    """Preference rows from the distinct candidates of one problem, ranked by the verifier (ties dropped).

    Args:
        problem: the problem the candidates answer.
        candidates: responses (sampled and possibly the reference); duplicates after whitespace normalisation
            count once.
        split: ``train`` or ``val``, stored in each row.
        selection: ``correct_vs_wrong`` keeps only pairs whose chosen response is exactly right; ``all_ranked``
            keeps every pair with different :func:`graded_score`.

    Returns:
        One row per pair: ``prompt``, ``chosen`` (higher score), ``rejected``, their scores, ``pair_type``
        (``exact_vs_wrong`` when chosen is exactly right, else ``partial_vs_worse``), ``chosen_correct`` and the
        reference ``answer``.
    """
    distinct = list(dict.fromkeys(" ".join(c.split()) for c in candidates))
    scored = sorted(((graded_score(c, problem.answer), c) for c in distinct), key=lambda sc: -sc[0])
    rows = []
    for i, (high, chosen) in enumerate(scored):
        for low, rejected in scored[i + 1 :]:
            correct = bool(exact_match(chosen, problem.answer))
            if high == low or (selection == "correct_vs_wrong" and not correct):
                continue
            rows.append(
                {
                    "prompt": problem.prompt,
                    "chosen": chosen,
                    "rejected": rejected,
                    "chosen_score": high,
                    "rejected_score": low,
                    "pair_type": "exact_vs_wrong" if correct else "partial_vs_worse",
                    "chosen_correct": correct,
                    "answer": problem.answer,
                    "split": split,
                }
            )
    return rows


@torch.no_grad()
def sample_responses(
    policy_dir: str,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    batch_size: int = 512,
    device: str | None = None,
) -> list[list[str]]:
    """Draw ``samples_per_prompt`` responses per prompt from the policy (KV cache, eval mode, seeded).

    Returns:
        For each prompt, its list of response texts.
    """
    from lit_rlhf.models.loading import load_causal_lm, load_tokenizer, resolve_device

    device = resolve_device(device)
    tokenizer = load_tokenizer(policy_dir)
    model = load_causal_lm(policy_dir, tokenizer).to(device).eval()
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    with torch.random.fork_rng(devices=[device] if device.startswith("cuda") else []):
        torch.manual_seed(seed)
        texts = responses_in_batches(
            model,
            tokenizer,
            [tokenizer(p)["input_ids"] for p in repeated],
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            sort_by_length=False,  # the given order: each prompt's samples draw the same random numbers as before
            do_sample=True,
            temperature=temperature,
        )
    return [texts[i : i + samples_per_prompt] for i in range(0, len(texts), samples_per_prompt)]


def label_pairs(policy_dir: str, settings: LabelSettings) -> list[dict[str, Any]]:
    """Sample, judge and pair responses for the labelled training and held-out problems (no cache)."""
    train_problems, val_problems = split_problems(settings.num_val, None, settings.seed)
    splits = {"train": train_problems[: settings.num_train_prompts], "val": val_problems}
    rng = random.Random(settings.seed)
    rows: list[dict[str, Any]] = []
    for split, problems in splits.items():
        responses = sample_responses(
            policy_dir,
            [p.prompt for p in problems],
            samples_per_prompt=settings.samples_per_prompt,
            temperature=settings.temperature,
            max_new_tokens=settings.max_new_tokens,
            seed=settings.seed + (split == "val"),
        )
        for problem, candidates in zip(problems, responses):
            if rng.random() < settings.reference_fraction:
                candidates = [*candidates, problem.answer]
            rows.extend(rank_pairs(problem, candidates, split, settings.pair_selection))
    return rows


def read_cache(path: str) -> list[dict[str, Any]]:
    """The labelled pairs of a cache file (one JSON object per line).

    Raises:
        DataError: a line is not a JSON object (a file edited or cut by hand), naming the file and the line.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                row = err.msg
            if not isinstance(row, dict):
                what = row if isinstance(row, str) else type(row).__name__
                raise DataError(
                    f"{path} row {number}: not a labelled pair ({what}); the cache file is damaged: delete it to "
                    "label the pairs again"
                )
            rows.append(row)
    return rows


def load_or_label(policy_dir: str, settings: LabelSettings, cache_dir: str) -> tuple[list[dict[str, Any]], str]:
    """Labelled pairs of ``policy_dir`` from the cache, labelling them first if the cache has none.

    Returns:
        ``(rows, path of the cache file)``.
    """
    path = cache_path(cache_dir, policy_dir, settings)
    if os.path.isfile(path):
        rows = read_cache(path)
        log.info("reusing %d labelled pairs from %s", len(rows), path)
        return rows, path
    start = time.perf_counter()
    rows = label_pairs(policy_dir, settings)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)  # atomic: a crash never leaves a half-written cache
    with open(path.replace(".jsonl", ".meta.json"), "w") as f:
        json.dump({"policy_dir": policy_dir, "policy_sha256": policy_digest(policy_dir), **asdict(settings)}, f)
    log.warning("labelled %d pairs in %.0fs into %s", len(rows), time.perf_counter() - start, path)
    return rows, path


def summarize(rows: Sequence[dict[str, Any]]) -> str:
    """Counts of pairs per split and pair type."""
    counts: dict[tuple[str, str], int] = {}
    for row in rows:
        key = (row["split"], row["pair_type"])
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{split}/{kind}: {n}" for (split, kind), n in sorted(counts.items()))


LABEL_COMMAND_DESCRIPTION = """lit-rlhf label: label the arithmetic reward model's preference pairs ahead of training.

The policy (the SFT export) answers each training and held-out prompt several times; the task's verifier ranks the
distinct answers and pairs them (each right answer over each wrong one). The pairs go to a jsonl cache named by a
digest of the policy's weights and of every setting below, where the reward config's data module finds them: with the
defaults, `lit-rlhf fit --config configs/arithmetic/reward.yaml` reuses what this command labelled. Prints the cache
file and the number of pairs per split and pair type.

    lit-rlhf label --policy runs/arithmetic/sft/hf
    lit-rlhf label --policy runs/arithmetic/sft/hf --num_label_prompts 16384
"""


def build_parser(prog: str = "lit-rlhf label") -> Any:
    """The options of ``lit-rlhf label``; their names are the data keys of ``configs/arithmetic/reward.yaml``."""
    from lit_rlhf.cli import CommandParser, add_policy_option

    defaults = LabelSettings()
    parser = CommandParser(prog, LABEL_COMMAND_DESCRIPTION)
    add_policy_option(
        parser,
        "the policy whose answers are labelled: the SFT export, e.g. runs/arithmetic/sft/hf (the data key "
        "labeller_policy)",
        positional_alias=True,
    )
    parser.add_option(
        "--pairs_cache_dir",
        "--cache-dir",
        default="runs/arithmetic/labelled_pairs",
        metavar="DIR",
        help="folder of the labelled-pair cache, relative to the current directory (default: %(default)s)",
    )
    parser.add_option(
        "--samples_per_prompt",
        "--samples-per-prompt",
        type=int,
        default=defaults.samples_per_prompt,
        metavar="N",
        help="answers sampled from the policy per prompt (default: %(default)s)",
    )
    parser.add_option(
        "--label_temperature",
        "--temperature",
        type=float,
        default=defaults.temperature,
        metavar="T",
        help="sampling temperature; 1.0 samples the policy's own distribution (default: %(default)s)",
    )
    parser.add_option(
        "--max_new_tokens",
        "--max-new-tokens",
        type=int,
        default=defaults.max_new_tokens,
        metavar="N",
        help="longest sampled answer, in tokens; the data module always uses 20, so another value makes a cache "
        "that training does not read (default: %(default)s)",
    )
    parser.add_option(
        "--reference_fraction",
        "--reference-fraction",
        type=float,
        default=defaults.reference_fraction,
        metavar="FRACTION",
        help="share of prompts whose reference answer joins the sampled ones, 0 to 1 (default: %(default)s)",
    )
    parser.add_option(
        "--num_label_prompts",
        "--num-train-prompts",
        type=int,
        default=defaults.num_train_prompts,
        metavar="N",
        help="training prompts labelled, the first N of the seeded training order (default: %(default)s)",
    )
    parser.add_option(
        "--num_val",
        "--num-val",
        type=int,
        default=defaults.num_val,
        metavar="N",
        help="held-out prompts, all of them labelled for validation (default: %(default)s)",
    )
    parser.add_option(
        "--data_seed",
        type=int,
        default=defaults.seed,
        metavar="SEED",
        help="the data module's seed: fixes the split, the sampling and which prompts get the reference answer "
        "(default: %(default)s)",
    )
    parser.add_option(
        "--pair_selection",
        "--pair-selection",
        choices=PAIR_SELECTIONS,
        default=defaults.pair_selection,
        help="correct_vs_wrong: each right answer over each wrong one; all_ranked: also a wrong answer over a worse "
        "one, by partial credit (default: %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "lit-rlhf label") -> str:
    """``lit-rlhf label``: label (or find in the cache) the pairs of ``--policy``; returns the cache file."""
    args = build_parser(prog).parse_args(argv)
    settings = LabelSettings(
        samples_per_prompt=args.samples_per_prompt,
        temperature=args.label_temperature,
        max_new_tokens=args.max_new_tokens,
        reference_fraction=args.reference_fraction,
        num_train_prompts=args.num_label_prompts,
        num_val=args.num_val,
        seed=args.data_seed,
        pair_selection=args.pair_selection,
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows, path = load_or_label(args.policy, settings, args.pairs_cache_dir)
    print(f"{path}: {len(rows)} pairs ({summarize(rows)})")
    return path


if __name__ == "__main__":
    main()
