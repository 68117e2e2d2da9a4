import argparse
import glob
import importlib
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from lit_rlhf.cli import COMMANDS, cli_main, run_command
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import SFT_METRICS, fixture_texts, read_events, save_tiny_gpt2, tiny_cli_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
SFT_CONFIG = os.path.join(ROOT, "configs", "arithmetic", "sft.yaml")
QA_FIXTURE = os.path.join(ROOT, "tests", "fixtures", "sft", "qa.jsonl")


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", config, "--print_config"])
    assert exit_info.value.code in (None, 0)
    printed = capsys.readouterr().out
    assert "class_path: lit_rlhf." in printed and "trainer:" in printed


def test_help_and_print_config_from_the_script():
    out = subprocess.run([sys.executable, "train.py", "fit", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "--ckpt_path" in out.stdout and "--hf_export.dirname" in out.stdout
    out = subprocess.run(
        [sys.executable, "train.py", "fit", "--print_config"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0 and "seed_everything" in out.stdout


LIT_RLHF_SCRIPT = os.path.join(os.path.dirname(sys.executable), "lit-rlhf")


def test_one_command_lists_its_subcommands_from_any_directory(tmp_path):
    entries = [[sys.executable, "-m", "lit_rlhf"], [sys.executable, os.path.join(ROOT, "train.py")]]
    if os.path.isfile(LIT_RLHF_SCRIPT):  # the installed console script, where the package is installed
        entries.append([LIT_RLHF_SCRIPT])
    for entry in entries:
        out = subprocess.run([*entry, "--help"], cwd=tmp_path, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        for name in COMMANDS:
            assert f"\n  {name} " in out.stdout, (entry, name)
    out = subprocess.run(
        [sys.executable, "-m", "lit_rlhf", "fit", "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 0 and "usage: lit-rlhf [options] fit" in out.stdout and "--trainer.max_steps" in out.stdout


@pytest.mark.parametrize("name", [n for n in COMMANDS if n not in ("fit", "validate")])
def test_every_command_has_snake_case_options_with_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_command([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: lit-rlhf {name} [-h] ")
    parser = importlib.import_module(COMMANDS[name][0]).build_parser()
    shown = [a for a in parser._actions if a.help is not argparse.SUPPRESS and a.option_strings]
    assert len(shown) > 1
    for action in shown:
        long_names = [o for o in action.option_strings if o.startswith("--")]
        assert all(re.fullmatch(r"--[a-z0-9_]+", o) for o in long_names), long_names
        assert action.help and len(action.help) > 15, long_names
        if action.default not in (None, False, "", argparse.SUPPRESS) and long_names != ["--help"]:
            assert "default" in action.help, long_names  # every default is stated
    policy = [a for a in shown if "--policy" in a.option_strings]
    if name != "demo":  # the policy has one form everywhere: --policy PATH
        assert len(policy) == 1 and policy[0].metavar == "PATH"


def test_unknown_commands_are_named_with_the_choices(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_command(["test", "--config", SFT_CONFIG])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown command 'test' (the modules define no test or predict step: use validate)" in err
    assert "choose from fit, validate, evaluate, winrate, label, demo" in err


def test_unknown_config_key_is_jsonargparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "--config", SFT_CONFIG, "--model.init_args.learning_rat", "0.1"])
    assert exit_info.value.code != 0
    assert "learning_rat" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(open(SFT_CONFIG).read().replace("  max_steps: 600", "  max_stepz: 600"))
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(bad)])
    assert "max_stepz" in capsys.readouterr().err


def test_missing_ckpt_path_is_a_clear_error(tmp_path):
    from lit_rlhf.modules import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError, match="--ckpt_path .*nope.ckpt: no such checkpoint file"):
        cli_main(
            tiny_cli_args(SFT_CONFIG, str(tmp_path / "runs" / "x" / "sft"))
            + ["--ckpt_path", str(tmp_path / "nope.ckpt")]
        )


def test_fit_writes_run_folder_and_resumes_with_the_same_command(tmp_path):
    run_dir = str(tmp_path / "runs" / "arithmetic" / "sft")
    cli = cli_main(tiny_cli_args(SFT_CONFIG, run_dir, max_steps=6))
    assert cli.trainer.global_step == 6
    for name in ("config.yaml", "checkpoints/last.ckpt", "hf/model.safetensors", "hf/tokenizer.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    scalars, texts = read_events(run_dir)
    for tag in SFT_METRICS:
        assert tag in scalars, tag
    header = "| prompt | generated | reference | exact_match | graded_score |"
    assert any(header in t for t in texts["samples/val/text_summary"])

    # Same command plus --ckpt_path and more steps: config.yaml exists and is overwritten, training continues.
    args = tiny_cli_args(SFT_CONFIG, run_dir, max_steps=9)
    cli = cli_main(args + ["--ckpt_path", os.path.join(run_dir, "checkpoints", "last.ckpt")])
    assert cli.trainer.global_step == 9
    steps = [s for s, _ in read_events(run_dir)[0]["train/loss"]]
    assert sorted(steps) == list(range(9))  # one point per step, no gap or repeat at the resume


def test_any_hf_causal_lm_with_the_generic_sft_datamodule(tmp_path, capsys):
    model_dir = save_tiny_gpt2(str(tmp_path / "gpt2"), fixture_texts(QA_FIXTURE))
    run_dir = tmp_path / "runs" / "qa" / "sft"
    cli = cli_main(
        [
            "fit",
            "--config",
            SFT_CONFIG,
            "--model.model_name_or_path",  # the short form the README shows
            model_dir,
            "--model.learning_rate",
            "1e-3",
            "--data",
            "lit_rlhf.data.SFTDataModule",
            "--data.train",
            QA_FIXTURE,
            "--data.columns",
            '{"prompt": "question", "response": "answer"}',
            "--data.val_fraction",
            "0.25",
            "--data.batch_size",
            "4",
            "--data.max_length",
            "48",
            "--trainer.max_steps",
            "4",
            "--trainer.val_check_interval",
            "2",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
            "--trainer.logger.init_args.name",
            "qa",
            "--trainer.callbacks",
            "[]",
        ]
    )
    assert cli.trainer.global_step == 4
    from transformers import AutoModelForCausalLM, AutoTokenizer

    exported = AutoModelForCausalLM.from_pretrained(run_dir / "hf")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "hf")
    assert tokenizer.pad_token == tokenizer.eos_token  # set by lit_rlhf, saved with the export
    for name, value in exported.state_dict().items():
        assert torch.equal(value, cli.model.model.state_dict()[name])


def test_validate_subcommand_scores_a_checkpoint(tmp_path):
    run_dir = str(tmp_path / "runs" / "arithmetic" / "sft")
    cli_main(tiny_cli_args(SFT_CONFIG, run_dir, max_steps=3))
    args = ["validate"] + tiny_cli_args(SFT_CONFIG, run_dir)[1:]
    cli = cli_main(args + ["--ckpt_path", os.path.join(run_dir, "checkpoints", "last.ckpt")])
    metrics = cli.trainer.callback_metrics
    assert {"val/loss", "val/exact_match", "val/graded_score"} <= set(metrics)
    assert cli.datamodule.train_dataset is None  # validate tokenizes only the held-out split


REWARD_CONFIG = os.path.join(ROOT, "configs", "arithmetic", "reward.yaml")


def test_reward_stage_reads_the_sft_export_labels_pairs_and_resumes(tmp_path):
    runs = tmp_path / "runs" / "arithmetic"
    cli_main(tiny_cli_args(SFT_CONFIG, str(runs / "sft"), max_steps=3))
    sft_hf = str(runs / "sft" / "hf")
    run_dir = str(runs / "reward")
    args = tiny_cli_args(REWARD_CONFIG, run_dir, max_steps=6)
    args = [a for a in args if a != json.dumps(TINY_MODEL_CONFIG)]
    args.remove("--model.init_args.model_config")  # the architecture comes from the SFT export
    args += [
        "--model.init_args.model_name_or_path",
        sft_hf,
        "--data.init_args.labeller_policy",
        sft_hf,
        "--data.init_args.num_label_prompts",
        "64",
        "--data.init_args.pairs_cache_dir",
        str(tmp_path / "pairs"),
    ]
    cli = cli_main(args)
    assert cli.trainer.global_step == 6
    scalars, texts = read_events(run_dir)
    for tag in ("train/loss", "train/accuracy", "train/margin", "val/accuracy", "val/margin", "val/accuracy/synthetic"):
        assert tag in scalars, tag
    assert any(
        "| prompt | chosen | rejected | r_chosen | r_rejected |" in t for t in texts["samples/val_pairs/text_summary"]
    )
    from transformers import AutoModelForSequenceClassification

    exported = AutoModelForSequenceClassification.from_pretrained(os.path.join(run_dir, "hf"))
    assert exported.config.num_labels == 1 and exported.config.reward_normalization["num_responses"] > 0
    assert len(glob.glob(str(tmp_path / "pairs" / "arithmetic-labelled-*.jsonl"))) == 1

    args[args.index("--trainer.max_steps") + 1] = "8"  # the same command, continued to step 8
    resumed = cli_main(args + ["--ckpt_path", os.path.join(run_dir, "checkpoints", "last.ckpt")])
    assert resumed.trainer.global_step == 8
    steps = [s for s, _ in read_events(run_dir)[0]["train/loss"]]
    assert sorted(steps) == list(range(8))


def test_any_hf_model_as_reward_model_with_the_generic_preference_datamodule(tmp_path):
    pairs = os.path.join(ROOT, "tests", "fixtures", "preference", "pairs.jsonl")
    texts = [" ".join(str(v) for v in json.loads(line).values()) for line in open(pairs)]
    model_dir = save_tiny_gpt2(str(tmp_path / "gpt2"), texts)  # no pad token, like GPT-2
    run_dir = tmp_path / "runs" / "qa" / "reward"
    args = [
        "fit",
        "--config",
        REWARD_CONFIG,
        "--model.model_name_or_path",
        model_dir,
        "--data",
        "lit_rlhf.data.PreferenceDataModule",
        "--data.train",
        pairs,
        "--data.columns",
        '{"prompt": "question", "chosen": "good", "rejected": "bad"}',
        "--data.val_fraction",
        "0.4",
        "--data.batch_size",
        "2",
        "--trainer.max_steps",
        "3",
        "--trainer.val_check_interval",
        "2",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(tmp_path / "runs"),
        "--trainer.logger.init_args.name",
        "qa",
        "--trainer.callbacks",
        "[]",
    ]
    with pytest.raises(ValueError, match="has no pad token; a reward model needs a pad token distinct from EOS"):
        cli_main(args)
    cli = cli_main(args + ["--model.pad_token", "<|pad|>"])
    assert cli.trainer.global_step == 3
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    exported = AutoModelForSequenceClassification.from_pretrained(run_dir / "hf")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "hf")
    assert tokenizer.pad_token == "<|pad|>" and exported.config.pad_token_id == tokenizer.pad_token_id
    assert exported.config.reward_normalization["num_responses"] > 0


PPO_CONFIG = os.path.join(ROOT, "configs", "arithmetic", "ppo.yaml")


def test_ppo_stage_reads_sft_and_reward_exports_and_resumes(tmp_path):
    runs = tmp_path / "runs" / "arithmetic"
    cli_main(tiny_cli_args(SFT_CONFIG, str(runs / "sft"), max_steps=3))
    sft_hf = str(runs / "sft" / "hf")
    reward_args = tiny_cli_args(REWARD_CONFIG, str(runs / "reward"), max_steps=3)
    reward_args += ["--model.init_args.model_name_or_path", sft_hf, "--data.init_args.pairs", "synthetic"]
    cli_main(reward_args)
    reward_hf = str(runs / "reward" / "hf")

    run_dir = str(runs / "ppo")
    # One PPO iteration (ppo_epochs x num_minibatches steps of each optimizer) is one training step.
    args = tiny_cli_args(PPO_CONFIG, run_dir, max_steps=3)
    args += [
        "--model.init_args.policy_name_or_path",
        sft_hf,
        "--model.init_args.critic_name_or_path",
        reward_hf,
        "--model.init_args.reward.init_args.model_name_or_path",
        reward_hf,
        "--model.init_args.max_new_tokens",
        "8",
    ]
    cli = cli_main(args)
    assert cli.trainer.global_step == 3 and cli.model.iteration == 3
    scalars, texts = read_events(run_dir)
    for tag in ("objective/score", "objective/kl", "policy/entropy", "loss/value", "val/exact_match", "val/reward"):
        assert tag in scalars, tag
    assert [s for s, _ in scalars["objective/kl"]] == [0, 1, 2]
    assert any("| prompt | greedy response | reward | exact match |" in t for t in texts["samples/val/text_summary"])
    for name in ("hf/model.safetensors", "hf/tokenizer.json", "hf_critic/model.safetensors", "config.yaml"):
        assert os.path.isfile(os.path.join(run_dir, name)), name

    args[args.index("--trainer.max_steps") + 1] = "5"  # the same command, continued to iteration 5
    resumed = cli_main(args + ["--ckpt_path", os.path.join(run_dir, "checkpoints", "last.ckpt")])
    assert resumed.trainer.global_step == 5 and resumed.model.iteration == 5
    assert sorted(s for s, _ in read_events(run_dir)[0]["objective/kl"]) == [0, 1, 2, 3, 4]


def test_ppo_with_a_plain_reward_function_picked_in_yaml(tmp_path):
    runs = tmp_path / "runs" / "arithmetic"
    cli_main(tiny_cli_args(SFT_CONFIG, str(runs / "sft"), max_steps=3))
    args = tiny_cli_args(os.path.join(ROOT, "configs", "arithmetic", "ppo_verifier.yaml"), str(runs / "ppo"), 1)
    args += [
        "--model.init_args.policy_name_or_path",
        str(runs / "sft" / "hf"),
        "--model.init_args.max_new_tokens",
        "6",
        "--model.init_args.reward",
        json.dumps(
            {
                "class_path": "lit_rlhf.rewards.FunctionReward",
                "init_args": {"function": "tests.helpers.word_count_reward"},
            }
        ),
    ]
    cli = cli_main(args)
    assert cli.model.reward.name == "word_count_reward" and cli.model.iteration == 1
    scores = read_events(str(runs / "ppo"))[0]["objective/score"]
    assert len(scores) == 1 and scores[0][1] <= 0  # minus the word count, after any missing-EOS penalty
