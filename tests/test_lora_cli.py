"""LoRA through the command line: an adapter run resumed midway equals the uninterrupted one, and every LoRA setting
a user can get wrong is refused in one line (exit 2, no traceback)."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from lit_rlhf.cli import cli_main, main
from tests.helpers import read_events, tiny_cli_args

ROOT = os.path.dirname(os.path.abspath(__file__ + "/.."))
CONFIGS = os.path.join(ROOT, "configs", "arithmetic")
SFT_CONFIG = os.path.join(CONFIGS, "sft.yaml")
CONSTANT_LR = ["--model.init_args.lr_schedule", "constant", "--model.init_args.warmup_steps", "0"]
PEFT = "--model.init_args.peft_config"


def lora(r: int = 4, target_modules: str = "all-linear", **extra: str) -> list[str]:
    args = [
        f"{PEFT}.class_path",
        "peft.LoraConfig",
        f"{PEFT}.init_args.r",
        str(r),
        f"{PEFT}.init_args.lora_alpha",
        "8",
        f"{PEFT}.init_args.target_modules",
        target_modules,
    ]
    for key, value in extra.items():
        args += [f"{PEFT}.init_args.{key}", value]
    return args


def sft_args(run_dir: str, max_steps: int, *extra: str, config: str = SFT_CONFIG) -> list[str]:
    return tiny_cli_args(config, run_dir, max_steps=max_steps) + CONSTANT_LR + list(extra)


def error_line(capsys, argv: list[str]) -> str:
    """Run ``lit-rlhf argv``: it must exit 2 with one error line (and its hint), no traceback; returns the line."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if re.match(r"lit-rlhf( fit)?: error: ", line))
    assert len(lines[first:]) == 2, lines[first:]  # the error and one hint
    return lines[first]


def last_state(run_dir: str) -> dict[str, torch.Tensor]:
    path = os.path.join(run_dir, "checkpoints", "last.ckpt")
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def curves(run_dir: str) -> dict[str, dict[int, float]]:
    scalars, _ = read_events(run_dir)
    return {tag: dict(points) for tag, points in scalars.items()}


def every_three_steps(config: str, tmp_path) -> str:
    """``config`` with its checkpoint written every 3 steps (a copy under ``tmp_path``)."""
    with open(config) as f:
        text = f.read()
    text, count = re.subn(r"every_n_train_steps: \d+", "every_n_train_steps: 3", text)
    assert count == 1
    path = str(tmp_path / os.path.basename(config))
    with open(path, "w") as f:
        f.write(text)
    return path


def assert_resumed_equals_uninterrupted(tmp_path, config: str, args_for) -> None:
    """``args_for(config, run_dir)`` run 6 steps at once, and ended by a kill after step 3 (``train.py`` in a process
    of its own) then resumed from its ``last.ckpt``: the same adapters (bit for bit) and the same logged curves."""
    config = every_three_steps(config, tmp_path)
    whole = str(tmp_path / "whole" / "arithmetic" / "run")
    split = str(tmp_path / "split" / "arithmetic" / "run")
    cli_main(args_for(config, whole))
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    killed = args_for(config, split) + ["--trainer.callbacks+=tests.helpers.ExitAfterStep"]
    killed += ["--trainer.callbacks.step=3"]
    run = subprocess.run(
        [sys.executable, "train.py", *killed], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ckpt = os.path.join(split, "checkpoints", "last.ckpt")
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 3
    cli_main(args_for(config, split) + ["--ckpt_path", ckpt])
    expected, got = last_state(whole), last_state(split)
    assert expected.keys() == got.keys()
    assert any(".lora_" in k for k in expected) and not any(".base_layer." in k for k in expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    expected_curves, got_curves = curves(whole), curves(split)
    assert expected_curves.keys() == got_curves.keys()
    assert max(step for points in expected_curves.values() for step in points) >= 5  # logged past the resume
    assert got_curves == expected_curves


def test_sft_with_adapters_killed_after_step_3_and_resumed_equals_the_uninterrupted_run(tmp_path):
    def args_for(config: str, run_dir: str) -> list[str]:
        return sft_args(run_dir, 6, *lora(), config=config)

    assert_resumed_equals_uninterrupted(tmp_path, SFT_CONFIG, args_for)


def online_args(policy: str):
    def args_for(config: str, run_dir: str) -> list[str]:
        args = tiny_cli_args(config, run_dir, max_steps=6)
        at = args.index("--model.init_args.model_config")
        del args[at : at + 2]  # the policy is loaded from its folder
        args[args.index("--data.init_args.batch_size") + 1] = "8"
        return args + CONSTANT_LR + lora() + [
            "--model.init_args.policy_name_or_path",
            policy,
            "--model.init_args.max_new_tokens",
            "6",
        ]

    return args_for


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ppo_verifier.yaml", "grpo.yaml"])
def test_online_stages_with_adapters_killed_and_resumed_equal_the_uninterrupted_run(tmp_path, policy_dir, config):
    assert_resumed_equals_uninterrupted(tmp_path, os.path.join(CONFIGS, config), online_args(policy_dir))


# -- refused settings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, expected",
    [
        (lora(target_modules='["no_such_layer"]'), "target_modules"),
        (lora(use_dora="true"), "use_dora"),
        ([f"{PEFT}.class_path", "peft.IA3Config"], "LoraConfig"),
    ],
    ids=["target_modules_match_nothing", "dora", "not_lora"],
)
def test_bad_lora_settings_are_refused_in_one_line(tmp_path, capsys, extra, expected):
    line = error_line(capsys, sft_args(str(tmp_path / "runs" / "a" / "sft"), 2, *extra))
    assert expected in line and "peft_config" in line, line


def test_4bit_without_bitsandbytes_says_what_to_install(tmp_path, capsys, policy_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes fails, as where it is missing
    args = sft_args(str(tmp_path / "runs" / "a" / "sft"), 2, *lora(), "--model.init_args.load_in_4bit", "true")
    line = error_line(capsys, args + ["--model.init_args.model_name_or_path", policy_dir])
    assert "load_in_4bit" in line and "pip install" in line and "bitsandbytes" in line, line


def test_4bit_without_adapters_is_refused(tmp_path, capsys, policy_dir):
    args = sft_args(str(tmp_path / "runs" / "a" / "sft"), 2, "--model.init_args.load_in_4bit", "true")
    line = error_line(capsys, args + ["--model.init_args.model_name_or_path", policy_dir])
    assert "load_in_4bit" in line and "peft_config" in line, line


def test_freeze_backbone_with_adapters_is_refused(tmp_path, capsys, policy_dir):
    args = tiny_cli_args(os.path.join(CONFIGS, "reward.yaml"), str(tmp_path / "runs" / "a" / "rm"), max_steps=2)
    args += ["--model.init_args.model_name_or_path", policy_dir, "--data.init_args.labeller_policy", policy_dir]
    line = error_line(capsys, args + lora() + ["--model.init_args.freeze_backbone", "true"])
    assert "freeze_backbone" in line and "peft_config" in line, line


def test_adapters_under_the_raw_model_parallel_strategy_point_to_fsdp2(tmp_path, capsys):
    strategy = json.dumps({"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"})
    args = sft_args(str(tmp_path / "runs" / "a" / "sft"), 2, *lora(), "--trainer.strategy", strategy)
    line = error_line(capsys, args)
    assert "fsdp2" in line, line


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step full fine-tuning run and a 2-step adapter run (r 4) of the tiny SFT model."""
    root = tmp_path_factory.mktemp("lora_runs")
    full = str(root / "full" / "arithmetic" / "sft")
    adapted = str(root / "lora" / "arithmetic" / "sft")
    cli_main(sft_args(full, 2))
    cli_main(sft_args(adapted, 2, *lora()))
    return {"full": full, "lora": adapted}


def resume_line(runs, tmp_path, capsys, source: str, extra: list[str]) -> str:
    run_dir = str(tmp_path / "runs" / "arithmetic" / "sft")
    shutil.copytree(runs[source], run_dir)
    ckpt = os.path.join(run_dir, "checkpoints", "last.ckpt")
    return error_line(capsys, sft_args(run_dir, 4, *extra) + ["--ckpt_path", ckpt])


def test_a_full_checkpoint_resumed_with_adapters_added_is_refused(runs, tmp_path, capsys):
    line = resume_line(runs, tmp_path, capsys, "full", lora())
    assert "last.ckpt" in line and "peft_config" in line, line


def test_an_adapter_checkpoint_resumed_without_adapters_is_refused(runs, tmp_path, capsys):
    line = resume_line(runs, tmp_path, capsys, "lora", [])
    assert "last.ckpt" in line and "peft_config" in line, line


def test_an_adapter_checkpoint_resumed_with_another_rank_is_refused(runs, tmp_path, capsys):
    line = resume_line(runs, tmp_path, capsys, "lora", lora(r=8))
    assert "last.ckpt" in line and "peft_config" in line, line
