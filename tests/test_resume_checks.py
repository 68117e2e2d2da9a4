"""Resuming from ``--ckpt_path``: broken and foreign checkpoints, changed settings, moved folders, clean errors."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from lightning.pytorch import Callback

from lit_rlhf.checkpoint_checks import (
    CHECKPOINT_KEY,
    CheckpointMismatchError,
    apply_configured_settings,
    apply_optimizer_settings,
    check_run_settings,
    check_state_shapes,
    compare_settings,
    describe_changes,
)
from lit_rlhf.cli import cli_main, main
from lit_rlhf.errors import UserError
from lit_rlhf.functional.schedules import warmup_decay_factor
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.parse_errors import condense_parse_error
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import read_events, tiny_cli_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT_CONFIG = os.path.join(ROOT, "configs", "arithmetic", "sft.yaml")
REWARD_CONFIG = os.path.join(ROOT, "configs", "arithmetic", "reward.yaml")
PPO_CONFIG = os.path.join(ROOT, "configs", "arithmetic", "ppo.yaml")
CONSTANT_LR = ["--model.init_args.lr_schedule", "constant", "--model.init_args.warmup_steps", "0"]


def _set(args: list[str], option: str, value: str) -> list[str]:
    """``args`` with ``option`` set to ``value`` (replaced where present, else appended)."""
    args = list(args)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    return args


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A 3-step SFT run (constant LR 1e-3): its run folder, with checkpoints/last.ckpt. Copy it before resuming."""
    run_dir = str(tmp_path_factory.mktemp("sft") / "runs" / "arithmetic" / "sft")
    args = tiny_cli_args(SFT_CONFIG, run_dir, max_steps=3) + CONSTANT_LR + ["--model.init_args.learning_rate", "1e-3"]
    cli_main(args)
    return run_dir


def _copy_run(run_dir: str, tmp_path) -> tuple[str, str]:
    copy = str(tmp_path / "runs" / "arithmetic" / "sft")
    shutil.copytree(run_dir, copy)
    return copy, os.path.join(copy, "checkpoints", "last.ckpt")


def _sft_args(run_dir: str, max_steps: int = 5) -> list[str]:
    return (
        tiny_cli_args(SFT_CONFIG, run_dir, max_steps=max_steps)
        + CONSTANT_LR
        + ["--model.init_args.learning_rate", "1e-3"]
    )


def _error_lines(stderr: str) -> list[str]:
    """The error line and what follows it (Lightning's warnings, printed when pytest does not capture them, before)."""
    lines = stderr.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if ": error: " in line)
    assert "Traceback" not in stderr
    return lines[first:]


# -- broken and foreign checkpoints: one error naming the file, before any model loads ------------------------------


def test_truncated_and_foreign_files_are_refused(sft_run, tmp_path):
    ckpt = os.path.join(sft_run, "checkpoints", "last.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(open(ckpt, "rb").read()[: os.path.getsize(ckpt) // 2])
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {}}, foreign)
    run_dir = str(tmp_path / "runs" / "x" / "sft")
    for path, match in [
        (truncated, "cannot be read as a checkpoint"),
        (text, "cannot be read as a checkpoint"),
        (foreign, "was not written by a lit_rlhf module"),
        (tmp_path / "nope.ckpt", "no such checkpoint file"),
    ]:
        with pytest.raises(CheckpointMismatchError, match=match) as info:
            cli_main(_sft_args(run_dir) + ["--ckpt_path", str(path)])
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not os.path.exists(tmp_path / "runs")  # refused before the run folder exists


@pytest.mark.parametrize(
    ("config", "module"), [(PPO_CONFIG, "lit_rlhf.modules.ppo.PPOModule"), (REWARD_CONFIG, "RewardModule")]
)
def test_another_stages_checkpoint_is_refused_before_any_model_loads(sft_run, tmp_path, config, module):
    ckpt = os.path.join(sft_run, "checkpoints", "last.ckpt")
    run_dir = str(tmp_path / "runs" / "arithmetic" / "other")
    # The configs' model paths (runs/arithmetic/sft/hf) do not exist here: loading any model would fail differently.
    with pytest.raises(
        CheckpointMismatchError,
        match=f"was written by lit_rlhf.modules.sft.SFTModule, but this config trains .*{module}",
    ):
        cli_main(tiny_cli_args(config, run_dir, max_steps=2) + ["--ckpt_path", ckpt])
    assert not os.path.exists(tmp_path / "runs")


def test_sft_checkpoint_given_to_ppo_exits_2_with_one_line_and_no_export(sft_run, tmp_path, capsys):
    run_dir = str(tmp_path / "runs" / "arithmetic" / "ppo")
    ckpt = os.path.join(sft_run, "checkpoints", "last.ckpt")
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_cli_args(PPO_CONFIG, run_dir, max_steps=2) + ["--ckpt_path", ckpt])
    assert exit_info.value.code == 2
    err = _error_lines(capsys.readouterr().err)
    assert err[0].startswith("lit-rlhf: error: --ckpt_path ") and "SFTModule" in err[0] and len(err) == 2
    assert not os.path.exists(os.path.join(run_dir, "hf")) and not os.path.exists(run_dir)


def test_same_class_with_another_model_config_is_refused(sft_run, tmp_path):
    run_dir, ckpt = _copy_run(sft_run, tmp_path)
    config = open(os.path.join(run_dir, "config.yaml")).read()
    wider = json.dumps({**TINY_MODEL_CONFIG, "hidden_size": 64})
    args = _set(_sft_args(run_dir), "--model.init_args.model_config", wider)
    with pytest.raises(
        CheckpointMismatchError, match="model_config .*cannot change on resume because it sets the architecture"
    ):
        cli_main(args + ["--ckpt_path", ckpt])
    assert open(os.path.join(run_dir, "config.yaml")).read() == config


def test_another_tokenizer_is_refused_and_the_run_folder_is_kept_as_it_was(policy_dir, tmp_path):
    run_dir = str(tmp_path / "runs" / "arithmetic" / "sft")
    args = _sft_args(run_dir, max_steps=3)
    args.remove("--model.init_args.model_config")
    args.remove(json.dumps(TINY_MODEL_CONFIG))
    args += ["--model.init_args.model_name_or_path", policy_dir]
    cli_main(args)
    other = str(tmp_path / "other_tokenizer")
    shutil.copytree(policy_dir, other)
    spec = json.load(open(os.path.join(other, "tokenizer.json")))
    vocab = spec["model"]["vocab"]
    (a, ia), (b, ib) = list(vocab.items())[-2:]
    vocab[a], vocab[b] = ib, ia  # same size, two words swapped
    json.dump(spec, open(os.path.join(other, "tokenizer.json"), "w"))
    config = open(os.path.join(run_dir, "config.yaml")).read()
    ckpt = os.path.join(run_dir, "checkpoints", "last.ckpt")
    with pytest.raises(CheckpointMismatchError, match=r"trained with another tokenizer \(130 tokens"):
        cli_main(
            _set(args, "--trainer.max_steps", "5")
            + ["--model.init_args.tokenizer_name_or_path", other, "--ckpt_path", ckpt]
        )
    assert open(os.path.join(run_dir, "config.yaml")).read() == config  # put back: it describes the checkpoints
    assert os.path.isfile(ckpt)


def test_another_world_size_and_batch_size_are_refused(sft_run, tmp_path):
    run_dir, ckpt = _copy_run(sft_run, tmp_path)
    with pytest.raises(CheckpointMismatchError, match="batch_size 16, and this run has 8 .*data position"):
        cli_main(_set(_sft_args(run_dir), "--data.init_args.batch_size", "8") + ["--ckpt_path", ckpt])
    checkpoint = torch.load(ckpt, weights_only=True)
    meta = checkpoint[CHECKPOINT_KEY]  # what the run recorded for these checks
    assert meta["world_size"] == 1 and meta["run"] == {
        "batch_size": 16,
        "data_seed": 1234,
        "accumulate_grad_batches": 1,
    }
    assert meta["tokenizer"]["size"] == len(build_word_tokenizer())  # the tiny model's word-level tokenizer
    checkpoint[CHECKPOINT_KEY]["world_size"] = 2
    two_ranks = str(tmp_path / "two_ranks.ckpt")
    torch.save(checkpoint, two_ranks)
    with pytest.raises(CheckpointMismatchError, match="world_size 2, and this run has 1"):
        cli_main(_sft_args(run_dir) + ["--ckpt_path", two_ranks])


def test_trainer_fit_with_ckpt_path_applies_the_same_checks(sft_run, tmp_path):
    from lit_rlhf.data import ArithmeticDataModule
    from lit_rlhf.modules import SFTModule
    from tests.helpers import quiet_trainer

    ckpt = os.path.join(sft_run, "checkpoints", "last.ckpt")
    module = SFTModule(model_config=TINY_MODEL_CONFIG, lr_schedule="constant", learning_rate=1e-3)
    data = ArithmeticDataModule(num_train=128, num_val=16, batch_size=8)
    with pytest.raises(CheckpointMismatchError, match="batch_size 16, and this run has 8"):
        quiet_trainer(tmp_path, max_steps=5).fit(module, datamodule=data, ckpt_path=ckpt)


# -- changed settings: applied, or refused with the reason --------------------------------------------------------


def test_a_new_learning_rate_is_used_from_the_first_resumed_step(sft_run, tmp_path, caplog):
    run_dir, ckpt = _copy_run(sft_run, tmp_path)
    args = _set(_sft_args(run_dir), "--model.init_args.learning_rate", "2e-3")
    with caplog.at_level("INFO"):
        cli = cli_main(args + ["--ckpt_path", ckpt])
    assert cli.trainer.global_step == 5
    assert "learning_rate 0.001 -> 0.002" in caplog.text
    optimizer, scheduler = cli.trainer.optimizers[0], cli.trainer.lr_scheduler_configs[0].scheduler
    assert [g["lr"] for g in optimizer.param_groups] == [2e-3, 2e-3]
    assert scheduler.base_lrs == [2e-3, 2e-3]
    lrs = dict(read_events(run_dir)[0]["train/lr"])
    assert lrs[0] == pytest.approx(1e-3) and lrs[3] == pytest.approx(2e-3) and lrs[4] == pytest.approx(2e-3)


def test_a_changed_schedule_is_the_configured_one_at_the_restored_step(sft_run, tmp_path):
    run_dir, ckpt = _copy_run(sft_run, tmp_path)
    args = _sft_args(run_dir, max_steps=8)
    for option, value in [("lr_schedule", "linear"), ("warmup_steps", "2"), ("min_lr_ratio", "0.2")]:
        args = _set(args, f"--model.init_args.{option}", value)
    cli = cli_main(args + ["--ckpt_path", ckpt])
    lrs = dict(read_events(run_dir)[0]["train/lr"])
    # The first resumed step (step 3) runs at the configured schedule: linear decay to 0.2 over 8 steps after 2 of
    # warmup, not at the constant rate the checkpoint was saved with.
    assert lrs[3] == pytest.approx(1e-3 * warmup_decay_factor(3, 2, 8, "linear", 0.2))
    assert lrs[5] == pytest.approx(1e-3 * warmup_decay_factor(5, 2, 8, "linear", 0.2))
    assert cli.trainer.global_step == 8


def test_compare_settings_policy():
    saved = {
        "_class_path": "x",
        "learning_rate": 1e-3,
        "ppo_epochs": 4,
        "model_config": {"hidden_size": 32},
        "policy_name_or_path": "runs/a/hf",
        "betas": [0.9, 0.999],
        "kl_coef": 0.05,
        "adaptive_kl_target": 6.0,
    }
    configured = {
        "_class_path": "y",
        "learning_rate": 5e-4,  # applied
        "ppo_epochs": 2,  # applied
        "model_config": {"hidden_size": 64},  # refused
        "policy_name_or_path": "/elsewhere/hf",  # a path: the config's, never compared
        "betas": (0.9, 0.999),  # a tuple equals the saved list
        "kl_coef": 0.1,  # refused: the adaptive controller's value is restored
        "adaptive_kl_target": 6.0,
        "new_option": 1,  # absent from the checkpoint: nothing to compare
    }
    refused, applied = compare_settings(saved, configured)
    assert [r[0] for r in refused] == ["model_config", "kl_coef"]
    assert applied == [("learning_rate", 1e-3, 5e-4), ("ppo_epochs", 4, 2)]
    fixed = {**configured, "adaptive_kl_target": None, "model_config": {"hidden_size": 32}}
    refused, applied = compare_settings({**saved, "adaptive_kl_target": None}, fixed)
    assert refused == [] and ("kl_coef", 0.05, 0.1) in applied


def test_changes_of_a_settings_group_name_its_changed_fields():
    old = {"gpu_memory_utilization": 0.3, "kv_cache_gib": 0.5, "max_num_seqs": 256}
    new = {"gpu_memory_utilization": 0.3, "kv_cache_gib": 0.25, "max_num_seqs": 256}
    line = describe_changes([("learning_rate", 1e-3, 5e-4), ("vllm", old, new)])
    assert line == "learning_rate 0.001 -> 0.0005, vllm.kv_cache_gib 0.5 -> 0.25"


def test_check_run_settings_skips_what_either_side_lacks():
    meta = {"module_class": "m", "run": {"batch_size": 8, "data_seed": 3, "accumulate_grad_batches": 1}}
    check_run_settings(meta, "c", world_size=1, batch_size=8, data_seed=None)
    with pytest.raises(CheckpointMismatchError, match="accumulate_grad_batches 1, and this run has 2"):
        check_run_settings(meta, "c", accumulate_grad_batches=2)
    with pytest.raises(CheckpointMismatchError, match="world_size 2"):  # recorded by the RNG states of 2 ranks
        check_run_settings({"rng_states_per_rank": [{}, {}]}, "c", world_size=1)


def test_weights_of_another_shape_are_refused_before_loading():
    own = {"model.w": torch.zeros(4, 8), "model.b": torch.zeros(8)}
    check_state_shapes({"model.w": torch.ones(4, 8), "model.b": torch.ones(8)}, own, "c")
    with pytest.raises(
        CheckpointMismatchError, match=r"c holds model.w of shape \(4, 16\), but this config's model has \(4, 8\)"
    ):
        check_state_shapes({"model.w": torch.ones(4, 16), "model.b": torch.ones(8)}, own, "c")
    with pytest.raises(CheckpointMismatchError, match="1 missing, e.g. model.b"):
        check_state_shapes({"model.w": torch.ones(4, 8)}, own, "c")
    check_state_shapes({"model.w": torch.ones(4, 8)}, own, "c", strict=False)


def _adamw_state(lr: float, factor: float, wd: float) -> tuple[dict, dict]:
    groups = [
        {
            "lr": lr * factor,
            "initial_lr": lr,
            "betas": (0.9, 0.999),
            "weight_decay": wd,
            "foreach": None,
            "fused": None,
        },
        {
            "lr": lr * factor,
            "initial_lr": lr,
            "betas": (0.9, 0.999),
            "weight_decay": 0.0,
            "foreach": None,
            "fused": None,
        },
    ]
    return {"state": {}, "param_groups": groups}, {"base_lrs": [lr, lr], "last_epoch": 4, "_last_lr": [lr * factor] * 2}


def test_apply_optimizer_settings_keeps_the_saved_schedule_ratio():
    optimizer, scheduler = _adamw_state(1e-3, 0.5, 0.1)
    apply_optimizer_settings(
        optimizer,
        scheduler,
        learning_rate=4e-3,
        weight_decay=0.2,
        betas=(0.8, 0.9),
        flags={"fused": True},
        schedule_factor=None,
    )
    # 4e-3 at the saved factor 0.5; decay only on the first (decay) group.
    assert [g["lr"] for g in optimizer["param_groups"]] == [2e-3, 2e-3]
    assert [g["weight_decay"] for g in optimizer["param_groups"]] == [0.2, 0.0]
    assert all(
        g["betas"] == (0.8, 0.9) and g["fused"] is True and g["foreach"] is None for g in optimizer["param_groups"]
    )
    assert scheduler["base_lrs"] == [4e-3, 4e-3] and scheduler["_last_lr"] == [2e-3, 2e-3]


def test_apply_configured_settings_gives_each_ppo_optimizer_its_own_rate_and_the_fixed_kl_coef():
    actor, actor_sched = _adamw_state(1e-5, 1.0, 0.0)
    critic, critic_sched = _adamw_state(1e-5, 1.0, 0.0)
    checkpoint = {
        "optimizer_states": [actor, critic],
        "lr_schedulers": [actor_sched, critic_sched],
        CHECKPOINT_KEY: {"online": {"iteration": 4, "kl": {"value": 0.05}}},
    }
    hparams = {
        "actor_learning_rate": 2e-5,
        "critic_learning_rate": 3e-5,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
        "warmup_steps": 0,
        "lr_schedule": "constant",
        "min_lr_ratio": 0.0,
        "kl_coef": 0.1,
        "adaptive_kl_target": None,
    }
    apply_configured_settings(checkpoint, hparams, max_steps=10, flags={})
    assert [g["lr"] for g in actor["param_groups"]] == [2e-5, 2e-5]
    assert [g["lr"] for g in critic["param_groups"]] == [3e-5, 3e-5]
    assert checkpoint[CHECKPOINT_KEY]["online"]["kl"]["value"] == 0.1
    checkpoint["hyper_parameters"] = {"adaptive_kl_target": 6.0}
    checkpoint[CHECKPOINT_KEY]["online"]["kl"]["value"] = 0.07  # adaptive in both runs: the restored value goes on
    apply_configured_settings(checkpoint, {**hparams, "adaptive_kl_target": 6.0}, max_steps=10, flags={})
    assert checkpoint[CHECKPOINT_KEY]["online"]["kl"]["value"] == 0.07
    checkpoint["hyper_parameters"] = {"adaptive_kl_target": None}  # fixed before: the controller starts at kl_coef
    apply_configured_settings(checkpoint, {**hparams, "adaptive_kl_target": 6.0}, max_steps=10, flags={})
    assert checkpoint[CHECKPOINT_KEY]["online"]["kl"]["value"] == 0.1


# -- paths come from the current config -------------------------------------------------------------------------


def test_resume_from_another_directory_after_moving_the_model_and_the_run(policy_dir, tmp_path, monkeypatch):
    first = tmp_path / "first"
    shutil.copytree(policy_dir, first / "model")
    monkeypatch.chdir(first)
    args = _sft_args(str(first / "runs" / "arithmetic" / "sft"), max_steps=3)
    args.remove("--model.init_args.model_config")
    args.remove(json.dumps(TINY_MODEL_CONFIG))
    cli_main(args + ["--model.init_args.model_name_or_path", "model"])  # a relative path, saved in the checkpoint
    moved = tmp_path / "moved"
    shutil.move(str(first), str(moved))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    run_dir = str(moved / "runs" / "arithmetic" / "sft")
    args = _sft_args(run_dir, max_steps=5)
    args.remove("--model.init_args.model_config")
    args.remove(json.dumps(TINY_MODEL_CONFIG))
    args += ["--model.init_args.model_name_or_path", str(moved / "model")]
    cli = cli_main(args + ["--ckpt_path", os.path.join(run_dir, "checkpoints", "last.ckpt")])
    assert cli.trainer.global_step == 5 and cli.model.hparams.model_name_or_path == str(moved / "model")


# -- no half-written run folder -----------------------------------------------------------------------------------


class FailAtTrainStart(Callback):
    """Fails after the run folder and its config.yaml are written, before the first training step."""

    def on_train_start(self, trainer, pl_module):
        raise UserError("stopped before the first step")


def test_a_fit_failing_before_its_first_step_leaves_no_new_run_folder(sft_run, tmp_path):
    callbacks = json.dumps([{"class_path": "tests.test_resume_checks.FailAtTrainStart"}])
    run_dir = str(tmp_path / "runs" / "arithmetic" / "sft")
    with pytest.raises(UserError, match="stopped before the first step"):
        cli_main(_sft_args(run_dir) + ["--trainer.callbacks", callbacks])
    assert not os.path.exists(tmp_path / "runs")  # the folders the command created, parents included
    resumed, ckpt = _copy_run(sft_run, tmp_path / "again")
    before = sorted(os.listdir(resumed)), open(os.path.join(resumed, "config.yaml")).read()
    with pytest.raises(UserError, match="stopped before the first step"):
        cli_main(_sft_args(resumed) + ["--trainer.callbacks", callbacks, "--ckpt_path", ckpt])
    assert os.path.isfile(ckpt) and open(os.path.join(resumed, "config.yaml")).read() == before[1]
    assert set(before[0]) <= set(os.listdir(resumed))  # an existing run folder is never removed


# -- parse errors are one line --------------------------------------------------------------------------------------


def test_condense_parse_error_names_the_option_and_the_accepted_values():
    nested = (
        'Parser key "model":\n  Does not validate against any of the Union subtypes\n'
        "  Subtypes: [RLHFModule, NoneType]\n"
        "  Errors:\n    - Problem with given class_path 'lit_rlhf.modules.SFTModule':\n"
        '        Parser key "lr_schedule":\n'
        "          Expected a typing.Literal['constant', 'linear', 'cosine']. Got value: cosin\n"
        "    - Expected a <class 'NoneType'>\n  Given value type: <class 'NestedArg'>\n  Given value: NestedArg(...)"
    )
    assert condense_parse_error(nested) == (
        "--model.init_args.lr_schedule: expected one of constant, linear, cosine, got 'cosin'"
    )
    unknown = nested.replace('Parser key "lr_schedule":', "Option 'learning_rat' is not accepted").replace(
        "          Expected a typing.Literal['constant', 'linear', 'cosine']. Got value: cosin\n", ""
    )
    assert condense_parse_error(unknown) == (
        "--model.init_args.learning_rat: lit_rlhf.modules.SFTModule takes no option 'learning_rat'; "
        "did you mean --model.init_args.learning_rate?"
    )
    required = unknown.replace("Option 'learning_rat' is not accepted", "the following arguments are required: reward")
    assert condense_parse_error(required).startswith(
        "--model.init_args.reward: required by lit_rlhf.modules.SFTModule and not given"
    )
    assert condense_parse_error("unrecognized arguments: --max_steps 3", ["--config", "--trainer.max_steps"]) == (
        "unrecognized arguments: --max_steps 3; did you mean --trainer.max_steps?"
    )


@pytest.mark.parametrize(
    "bad",
    [
        ["--model.init_args.learning_rat", "0.1"],
        ["--model.init_args.learning_rate", "fast"],
        ["--model", "lit_rlhf.modules.NoSuchModule"],
        ["--max_steps", "3"],
    ],
    ids=["unknown-key", "wrong-type", "unknown-class", "misspelt-flag"],
)
def test_parse_errors_are_one_line(bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", SFT_CONFIG, *bad, "--print_config"])
    lines = _error_lines(capsys.readouterr().err)
    assert exit_info.value.code == 2 and len(lines) == 2, lines
    assert lines[0].startswith("lit-rlhf fit: error: ") and bad[0].rsplit(".", 1)[-1].lstrip("-") in lines[0]


def test_a_parse_error_from_the_script_has_no_traceback():
    run = subprocess.run(
        [sys.executable, "train.py", "fit", "--config", SFT_CONFIG, "--model.init_args.learning_rat", "0.1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and "Traceback" not in run.stderr and len(lines) <= 3, run.stderr
    assert lines[0] == (
        "train.py fit: error: --model.init_args.learning_rat: lit_rlhf.modules.SFTModule takes no option "
        "'learning_rat'; did you mean --model.init_args.learning_rate?"
    )


@pytest.mark.parametrize(
    "option, value, named", [("--trainer.accelerator", "tpux", "tpux"), ("--trainer.devices", "0", "devices")]
)
def test_an_invalid_trainer_option_is_a_config_error(tmp_path, option, value, named):
    from lit_rlhf.errors import ConfigError

    run_dir = str(tmp_path / "runs" / "arithmetic" / "sft")
    with pytest.raises(ConfigError, match=f"invalid trainer option: .*{named}"):
        cli_main(_set(_sft_args(run_dir), option, value))
    assert not os.path.exists(tmp_path / "runs")


def test_module_options_are_checked_before_a_nested_reward_model_loads(tmp_path):
    from lit_rlhf.errors import ConfigError

    missing = str(tmp_path / "no_reward_model")  # loading it would fail with "no such model folder"
    run_dir = str(tmp_path / "runs" / "arithmetic" / "ppo")
    args = tiny_cli_args(PPO_CONFIG, run_dir, max_steps=1)
    args += ["--model.init_args.reward.init_args.model_name_or_path", missing, "--model.init_args.gamma", "2"]
    with pytest.raises(ConfigError, match="model.init_args.gamma"):
        cli_main(args)
