import json
import os

import pytest

from lit_rlhf.data import ArithmeticDataModule, arithmetic_labels
from lit_rlhf.data.arithmetic_labels import LabelSettings, cache_path, load_or_label, rank_pairs
from lit_rlhf.data.arithmetic_task import NEAR_MISSES, ArithmeticProblem, near_miss_terms
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.tiny import build_tiny_llama
from tests.conftest import TINY_MODEL_CONFIG

PROBLEM = ArithmeticProblem(start=1, difference=2, num_terms=4)  # answer "1 3 5 7"


def test_rank_pairs_prefers_verified_answers_and_drops_ties():
    candidates = ["1 3 5 7", "1  3 5 7", "1 3 5", "1 3 6 7", "9 9"]  # the second is the first, respaced
    rows = rank_pairs(PROBLEM, candidates, "train")
    pairs = {(r["chosen"], r["rejected"]) for r in rows}
    # Only the right answer is chosen: over "1 3 5" (score 3/4), "1 3 6 7" (3/4) and "9 9" (0).
    assert pairs == {("1 3 5 7", "1 3 5"), ("1 3 5 7", "1 3 6 7"), ("1 3 5 7", "9 9")}
    assert all(r["pair_type"] == "exact_vs_wrong" and r["chosen_correct"] for r in rows)
    ranked = rank_pairs(PROBLEM, candidates, "train", "all_ranked")
    extra = {(r["chosen"], r["rejected"]) for r in ranked} - pairs
    # "1 3 5" and "1 3 6 7" tie at 3/4: no pair between them; both beat "9 9".
    assert extra == {("1 3 5", "9 9"), ("1 3 6 7", "9 9")}
    assert {r["pair_type"] for r in ranked if (r["chosen"], r["rejected"]) in extra} == {"partial_vs_worse"}
    assert rank_pairs(PROBLEM, ["1 3 5 7", "1 3 5 7 "], "val") == []  # all the same answer: nothing to compare


@pytest.mark.parametrize("kind", NEAR_MISSES)
def test_near_misses_are_wrong_but_close(kind):
    import random

    rng = random.Random(0)
    for problem in (PROBLEM, ArithmeticProblem(90, 5, 6), ArithmeticProblem(100, 3, 5), ArithmeticProblem(0, 1, 14)):
        wrong = near_miss_terms(problem, kind, rng)
        assert wrong != problem.terms and all(isinstance(v, int) and v >= 0 for v in wrong)
        assert abs(len(wrong) - len(problem.terms)) <= 1 or kind == "wrong_difference"


@pytest.fixture
def sft_dir(tmp_path):
    tokenizer = build_word_tokenizer()
    model = build_tiny_llama(tokenizer, TINY_MODEL_CONFIG)
    path = str(tmp_path / "sft")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


SMALL = LabelSettings(samples_per_prompt=2, num_train_prompts=8, num_val=4, reference_fraction=1.0, max_new_tokens=6)


def test_labelled_pairs_are_cached_by_policy_identity_and_reused(sft_dir, tmp_path, monkeypatch):
    cache = str(tmp_path / "cache")
    rows, path = load_or_label(sft_dir, SMALL, cache)
    assert os.path.isfile(path) and rows == [json.loads(line) for line in open(path)]
    # The untrained model is always wrong and the reference always joins: every prompt gives pairs.
    assert {r["split"] for r in rows} == {"train", "val"} and all(r["chosen_correct"] for r in rows)
    meta = json.load(open(path.replace(".jsonl", ".meta.json")))
    assert meta["policy_dir"] == sft_dir and meta["samples_per_prompt"] == 2

    def no_labelling(*args, **kwargs):
        raise AssertionError("labelled again instead of reusing the cache")

    monkeypatch.setattr(arithmetic_labels, "label_pairs", no_labelling)
    assert load_or_label(sft_dir, SMALL, cache) == (rows, path)
    # Another setting or other weights give another cache file.
    assert cache_path(cache, sft_dir, LabelSettings(**{**SMALL.__dict__, "temperature": 0.5})) != path
    with open(os.path.join(sft_dir, "model.safetensors"), "ab") as f:
        f.write(b"\0")
    assert cache_path(cache, sft_dir, SMALL) != path


def test_labelled_datamodule_serves_labelled_and_synthetic_validation_pairs(sft_dir, tmp_path):
    data = ArithmeticDataModule(
        format="preference",
        pairs="labelled",
        labeller_policy=sft_dir,
        samples_per_prompt=2,
        reference_fraction=1.0,
        num_label_prompts=8,
        num_val=4,
        synthetic_mix=0.5,
        pairs_cache_dir=str(tmp_path / "cache"),
        batch_size=4,
    )
    data.connect(build_word_tokenizer())
    data.prepare_data()
    data.setup("fit")
    val_types = {ex["row"]["pair_type"] for ex in data.val_dataset}
    assert val_types == {"exact_vs_wrong", "synthetic", "near_miss"}
    train_types = [ex["row"]["pair_type"] for ex in data.train_dataset]
    assert train_types.count("synthetic") == round(0.5 * train_types.count("exact_vs_wrong"))
    batch = next(iter(data.train_dataloader()))
    assert batch["input_ids"].size(0) == 8
    # Reward statistics for PPO come from the SFT model's own answers, not from synthetic ones.
    normalization_types = {row["pair_type"] for b in data.normalization_dataloader() for row in b["rows"]}
    assert normalization_types == {"exact_vs_wrong"}


def test_labelled_pairs_need_a_policy_and_a_trained_one(tmp_path):
    with pytest.raises(ValueError, match="pairs: labelled needs labeller_policy"):
        ArithmeticDataModule(format="preference", pairs="labelled")
    data = ArithmeticDataModule(format="preference", pairs="labelled", labeller_policy=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="holds no model weights"):
        data.prepare_data()
    with pytest.raises(ValueError, match="unknown synthetic_kinds"):
        ArithmeticDataModule(format="preference", synthetic_kinds=["reversed"])


def test_the_label_command_fills_the_cache_the_data_module_reads(sft_dir, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    options = ["--samples_per_prompt", "2", "--num_label_prompts", "8", "--num_val", "4"]
    options += ["--reference_fraction", "1.0", "--max_new_tokens", "6"]
    path = arithmetic_labels.main(["--policy", sft_dir, "--pairs_cache_dir", cache, *options])
    assert path == cache_path(cache, sft_dir, SMALL) and os.path.isfile(path)
    assert f"{path}: " in capsys.readouterr().out
    # The older spelling (a bare policy path, kebab-case options) names the same settings, so the same cache file.
    old = [sft_dir, "--cache-dir", cache, "--samples-per-prompt", "2", "--num-train-prompts", "8", "--num-val", "4"]
    old += ["--reference-fraction", "1.0", "--max-new-tokens", "6"]
    assert arithmetic_labels.main(old) == path
    with pytest.raises(SystemExit):
        arithmetic_labels.main(["--policy", sft_dir, "--seed", "1"])  # the data seed is --data_seed
    assert "use --data_seed" in capsys.readouterr().err
