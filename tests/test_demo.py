import json
import os
import shlex
import subprocess
import sys

import pytest
from torch.utils.tensorboard import SummaryWriter

from lit_rlhf.demo import main, plot_ppo, scalar_curve, shipped_config_dir
from tests.conftest import TINY_MODEL_CONFIG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def test_the_shipped_configs_are_found_beside_the_package():
    assert shipped_config_dir() == CONFIGS


def test_ppo_plot_from_the_run_events(tmp_path):
    run_dir = tmp_path / "ppo"
    writer = SummaryWriter(str(run_dir))
    for step, (gold, reward) in enumerate([(0.83, 0.50), (0.84, 0.52)]):
        writer.add_scalar("val/exact_match", gold, global_step=19 + 20 * step)
        writer.add_scalar("val/reward", reward, global_step=19 + 20 * step)
    writer.close()
    assert scalar_curve(str(run_dir), "val/exact_match") == [(19, 0.8299999833106995), (39, 0.8399999737739563)]
    path = tmp_path / "curves.png"
    assert plot_ppo(str(run_dir), {"exact_match": 0.82, "reward": 0.49}, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_ppo(str(tmp_path / "no_run"), {}, str(tmp_path / "none.png"))  # nothing to plot: no file
    assert not (tmp_path / "none.png").exists()


def tiny_stage_args(max_steps: int, *extra: str) -> str:
    """A demo stage's extra ``fit`` options for a run of seconds: few steps, small held-out set, no progress bar."""
    options = ["--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", str(max_steps)]
    options += ["--trainer.enable_progress_bar", "false", "--data.init_args.num_val", "16", *extra]
    return shlex.join(options)


def test_the_demo_runs_from_any_directory_and_writes_runs_there(tmp_path, capsys, monkeypatch):
    work = tmp_path / "elsewhere"
    work.mkdir()
    sft = tiny_stage_args(2, "--model.init_args.model_config", json.dumps(TINY_MODEL_CONFIG))
    sft += " " + shlex.join(["--data.init_args.num_train", "64", "--data.init_args.batch_size", "16"])
    reward = tiny_stage_args(2, "--data.init_args.num_label_prompts", "16", "--data.init_args.reference_fraction", "1")
    reward += " " + shlex.join(["--data.init_args.batch_size", "8"])
    ppo = tiny_stage_args(1, "--data.init_args.batch_size", "8", "--model.init_args.max_new_tokens", "6")
    command = [sys.executable, "-m", "lit_rlhf", "demo", "--sft_args", sft, "--reward_args", reward, "--ppo_args", ppo]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("sft", "reward", "ppo"):
        assert (work / "runs" / "arithmetic" / stage / "hf" / "config.json").is_file(), stage
        assert f"== lit-rlhf fit --config {os.path.join(CONFIGS, 'arithmetic', stage + '.yaml')}" in done.stdout
    summary = (work / "runs" / "arithmetic" / "summary.md").read_text()
    assert "| sft |" in summary and "| reward | " in summary and "| ppo |" in summary and "exact-match" in summary
    assert "tensorboard --logdir runs" in done.stdout
    assert (work / "runs" / "arithmetic" / "labelled_pairs").is_dir()  # the reward config's relative cache folder

    # Again with --output_dir from another directory: every export is reused, nothing retrains.
    monkeypatch.chdir(tmp_path)
    assert main(["--output_dir", str(work)]) == str(work / "runs" / "arithmetic" / "summary.md")
    printed = capsys.readouterr().out
    assert printed.count("== reusing") == 3 and "== lit-rlhf fit" not in printed


def test_the_demo_says_where_configs_are_missing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--config_dir", str(tmp_path)])
    assert "pass --config_dir, the configs/ folder of a lit_rlhf checkout" in capsys.readouterr().err
