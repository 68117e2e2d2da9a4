"""The shipped configs/*/dpo.yaml run as a user runs them, for 2 steps, on tiny models and the fixture files."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from lit_rlhf.cli import cli_main
from lit_rlhf.data.tldr import TLDR_QUERY_FORMAT
from tests.data import test_hh_rlhf as hh
from tests.data import test_tldr as tldr
from tests.helpers import fixture_texts, read_events, save_tiny_gpt2, tiny_cli_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DPO_TAGS = {
    "train/loss",
    "train/rewards/accuracies",
    "train/rewards/margins",
    "train/logps/chosen",
    "val/loss",
    "val/rewards/accuracies",
}


def assert_trained_and_exported(cli, run_dir: str) -> None:
    assert cli.trainer.global_step == 2
    scalars, _ = read_events(run_dir)
    assert DPO_TAGS <= set(scalars), DPO_TAGS - set(scalars)
    exported = AutoModelForCausalLM.from_pretrained(os.path.join(run_dir, "hf"))
    state = cli.model.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in exported.state_dict().items())


def test_the_arithmetic_config_trains_and_logs_the_gold_metric(tmp_path):
    run_dir = str(tmp_path / "runs" / "arithmetic" / "dpo")
    args = tiny_cli_args(os.path.join(ROOT, "configs", "arithmetic", "dpo.yaml"), run_dir, max_steps=2)
    args += ["--model.init_args.model_name_or_path", "tiny-arithmetic", "--data.init_args.pairs", "synthetic"]
    args += ["--trainer.val_check_interval", "2", "--model.init_args.max_new_tokens", "4"]
    cli = cli_main(args)
    assert_trained_and_exported(cli, run_dir)
    scalars, texts = read_events(run_dir)
    assert "val/exact_match" in scalars and cli.model.reference is None  # precompute_ref_logps dropped it
    assert any("| prompt | chosen | rejected |" in t for t in texts["samples/val_pairs/text_summary"])


def test_the_hh_rlhf_config_trains_on_the_fixture(tmp_path):
    model_dir = save_tiny_gpt2(str(tmp_path / "gpt2"), fixture_texts(hh.TRAIN) + fixture_texts(hh.TEST))
    run_dir = str(tmp_path / "runs" / "hh_rlhf" / "dpo")
    cli = cli_main(
        hh.stage_args("dpo", run_dir, "--model.init_args.model_name_or_path", model_dir)
        + ["--trainer.accumulate_grad_batches", "1", "--model.init_args.max_new_tokens", "4"]
    )
    assert_trained_and_exported(cli, run_dir)


def test_the_tldr_config_trains_on_the_fixture(tmp_path):
    model_dir = str(tmp_path / "gpt2")
    texts = [tldr._strings(row) for p in (tldr.SFT_ROWS, tldr.COMPARISONS) for row in tldr.read(p)]
    save_tiny_gpt2(model_dir, texts + [TLDR_QUERY_FORMAT])
    config = GPT2Config.from_pretrained(model_dir)
    config.n_positions = 1024
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    runs = tmp_path / "runs"
    cli = cli_main(
        tldr.cli_args("dpo", runs, 2, "--model.init_args.model_name_or_path", model_dir)
        + ["--data.init_args.batch_size", "2", "--data.init_args.eval_batch_size", "2"]
        + ["--trainer.accumulate_grad_batches", "1", "--trainer.val_check_interval", "2"]
        + ["--data.init_args.train", tldr.COMPARISONS, "--data.init_args.val", tldr.COMPARISONS]
        + ["--model.init_args.max_new_tokens", "4", "--trainer.log_every_n_steps", "1"]
    )
    assert_trained_and_exported(cli, str(runs / "tldr" / "dpo"))


@pytest.mark.usefixtures("workdir")
def test_the_custom_template_trains_on_the_example_pairs(tmp_path):
    from tests.test_custom_configs import save_tiny_instruct_model, stage_args

    base = save_tiny_instruct_model(str(tmp_path / "base"))
    cli = cli_main(
        stage_args("dpo", "--model.init_args.model_name_or_path", base, "--model.init_args.max_new_tokens", "8")
        + ["--trainer.accumulate_grad_batches", "1", "--trainer.val_check_interval", "2"]
        + ["--trainer.log_every_n_steps", "1"]
    )
    assert_trained_and_exported(cli, os.path.join("runs", "custom", "dpo"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    from tests.test_custom_configs import DATA

    os.makedirs(tmp_path / "data")
    with open(os.path.join(DATA, "pairs.jsonl")) as source, open(tmp_path / "data" / "pairs.jsonl", "w") as target:
        target.write(source.read())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow  # a second Python process: about 8 s on 2 cores
def test_the_arithmetic_config_killed_after_step_3_and_resumed_equals_the_uninterrupted_run(tmp_path):
    import subprocess
    import sys

    from tests.test_lora_cli import curves, every_three_steps, last_state

    config = every_three_steps(os.path.join(ROOT, "configs", "arithmetic", "dpo.yaml"), tmp_path)

    def args_for(run_dir: str) -> list[str]:
        args = tiny_cli_args(config, run_dir, max_steps=6)
        return args + [
            "--model.init_args.model_name_or_path",
            "tiny-arithmetic",
            "--data.init_args.pairs",
            "synthetic",
            "--model.init_args.max_new_tokens",
            "4",
            "--model.init_args.learning_rate",
            "1e-3",
        ]

    whole = str(tmp_path / "whole" / "arithmetic" / "run")
    split = str(tmp_path / "split" / "arithmetic" / "run")
    cli_main(args_for(whole))
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    killed = args_for(split) + ["--trainer.callbacks+=tests.helpers.ExitAfterStep", "--trainer.callbacks.step=3"]
    run = subprocess.run(
        [sys.executable, "train.py", *killed], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = os.path.join(split, "checkpoints", "last.ckpt")
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3  # mid-epoch: 8 per epoch
    cli_main(args_for(split) + ["--ckpt_path", ckpt])
    expected, got = last_state(whole), last_state(split)
    assert expected.keys() == got.keys() and not any("reference" in key for key in expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    expected_curves, got_curves = curves(whole), curves(split)
    assert max(step for points in expected_curves.values() for step in points) >= 5
    assert got_curves == expected_curves
