"""Bad inputs through ``train.py fit``, typed as a new user would: does each end in one clean error line?

Each case runs ``python train.py fit --config configs/<...>.yaml <tiny overrides> <bad input>`` as a subprocess, in a
temporary working folder (so no run folder lands in the repository), with ``OMP_NUM_THREADS=1``, a tiny model and a
short run (so an input that is wrongly accepted finishes in seconds), capped at ``--timeout`` seconds. Before the
cases, a tiny SFT run and a tiny reward run in that folder write ``runs/arithmetic/sft`` and
``runs/arithmetic/reward`` (the exports and checkpoints the later stages and the checkpoint cases read).

Each result is one of:

- ``clean``: non-zero exit, no ``Traceback``, at most 3 lines on stderr once Lightning's start-up banner is removed
  (:data:`NOISE`), and the message names the thing that is wrong (one of the case's ``names``);
- ``buried``: non-zero exit and the thing is named, but under a traceback or among more than 3 lines;
- ``raw``: non-zero exit and nothing names the thing (an internal error);
- ``silent``: exit status 0 (the bad input was accepted);
- ``timeout``: still running after ``--timeout`` seconds.

Usage::

    python benchmarks/bad_inputs.py                       # every case; the table on stdout
    python benchmarks/bad_inputs.py --docs docs/errors.md # also write the table into the docs page
    python benchmarks/bad_inputs.py --only ppo            # cases whose stage or name contains "ppo"
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
}
"""A tiny Llama for the built-in model: every run that gets past its checks trains for seconds."""

COMMON = [
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
    "--trainer.log_every_n_steps",
    "1",
]
ARITHMETIC_DATA = ["--data.init_args.num_val", "8", "--data.init_args.eval_batch_size", "8"]

TINY: dict[str, list[str]] = {
    "sft": [
        "--model.init_args.model_config",
        json.dumps(TINY_MODEL),
        *ARITHMETIC_DATA,
        "--data.init_args.num_train",
        "64",
        "--data.init_args.batch_size",
        "8",
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        *COMMON,
    ],
    "reward": [
        *ARITHMETIC_DATA,
        "--data.init_args.pairs",
        "synthetic",
        "--data.init_args.num_train",
        "64",
        "--data.init_args.batch_size",
        "8",
        "--trainer.max_steps",
        "2",
        "--trainer.val_check_interval",
        "2",
        *COMMON,
    ],
    "ppo": [
        *ARITHMETIC_DATA,
        "--data.init_args.num_train",
        "32",
        "--data.init_args.batch_size",
        "8",
        "--model.init_args.max_new_tokens",
        "8",
        "--trainer.max_steps",
        "1",
        "--trainer.val_check_interval",
        "1",
        *COMMON,
    ],
    "grpo": [
        *ARITHMETIC_DATA,
        "--data.init_args.num_train",
        "32",
        "--data.init_args.batch_size",
        "4",
        "--model.init_args.num_generations",
        "2",
        "--model.init_args.max_new_tokens",
        "8",
        "--trainer.max_steps",
        "1",
        "--trainer.val_check_interval",
        "1",
        *COMMON,
    ],
}
"""Overrides that make each arithmetic stage tiny; the bad input comes after them (and so wins)."""

CUSTOM_TRAINER = [
    "--trainer.accelerator",
    "cpu",
    "--trainer.precision",
    "32-true",
    "--trainer.accumulate_grad_batches",
    "1",
    "--trainer.max_steps",
    "2",
    "--trainer.max_epochs",
    "1",
    *COMMON,
]
"""The trainer of the custom configs on the CPU, for two steps."""

CUSTOM_SFT = [
    "--model.init_args.model_name_or_path",
    "runs/arithmetic/sft/hf",
    "--model.init_args.max_new_tokens",
    "8",
    "--data.init_args.max_length",
    "64",
    "--data.init_args.max_prompt_length",
    "32",
    "--data.init_args.num_workers",
    "0",
    *CUSTOM_TRAINER,
]
"""configs/custom/sft.yaml on the tiny SFT export (its word-level tokenizer), for the data-file cases."""

CUSTOM_REWARD = [
    "--model.init_args.model_name_or_path",
    "runs/arithmetic/sft/hf",
    "--data.init_args.max_length",
    "64",
    "--data.init_args.num_workers",
    "0",
    *CUSTOM_TRAINER,
]
"""configs/custom/reward.yaml on the tiny SFT export."""

NOISE = [
    re.compile(p)
    for p in (
        r"^Seed set to \d+$",  # seed_everything's info line, printed on every run before anything is built
        r"^(GPU|TPU|HPU|IPU) available: ",  # Lightning's accelerator banner, printed when the Trainer is built
        r"^💡 Tip: ",  # Lightning's tip about litlogger / a faster install, printed once at start
        r"^You are using a CUDA device",  # Lightning's tensor-core hint on GPUs
        r"^LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES",
        r"^Loading (weights|checkpoint shards):",  # transformers' progress bar, drawn whenever a folder's model loads
        r"^`Trainer\(val_check_interval=\d+\)` was configured",  # Lightning's note on the tiny runs' interval of 1
        r"^\[(train|val)\] [^:]+: \d+ rows, ",  # the data module's row counts, logged at the setup of every run
    )
]
"""Lines printed on stderr by every run, good or bad, before the error: not part of the error message."""


@dataclass
class Case:
    """One bad input.

    Attributes:
        name: short id.
        stage: ``sft``, ``reward``, ``ppo``, ``grpo`` (the arithmetic config of that stage) or ``custom-sft`` /
            ``custom-reward`` (configs/custom, on local data files).
        input: what the user typed wrong, as shown in the table.
        args: the bad arguments, after the tiny overrides; ``{...}`` fields are filled from :func:`prepare`'s paths.
        names: the message is right when it holds one of these (the option, file, class or value at fault).
        config: a config file other than the stage's (``None``: the stage's).
        command: the subcommand (``fit``).
    """

    name: str
    stage: str
    input: str
    args: list[str]
    names: tuple[str, ...]
    config: str | None = None
    command: str = "fit"
    extra: list[str] = field(default_factory=list)


def opt(stage: str, option: str, value: str, *names: str) -> Case:
    """A bad value of ``--model.init_args.<option>``."""
    key = f"--model.init_args.{option}"
    return Case(f"{stage}-{option}-{value}", stage, f"{key} {value}", [key, value], names or (option,))


CASES: list[Case] = [
    # -- SFT: option values and kinds ---------------------------------------------------------------------------
    opt("sft", "learning_rate", "-1"),
    opt("sft", "learning_rate", "abc"),
    opt("sft", "warmup_steps", "-5"),
    opt("sft", "lr_schedule", "cosin"),
    opt("sft", "adamw_implementation", "adam"),
    opt("sft", "length_chunks", "0"),
    opt("sft", "max_new_tokens", "0"),
    opt("sft", "dtype", "float64"),
    opt("sft", "betas", "[0.9,1.5]"),
    opt("sft", "model_config", "5"),
    opt("sft", "no_such_option", "1"),
    Case(
        "sft-model-class",
        "sft",
        "--model.class_path lit_rlhf.modules.SFTModul (misspelt)",
        ["--model.class_path", "lit_rlhf.modules.SFTModul"],
        ("SFTModul",),
    ),
    Case(
        "sft-data-class",
        "sft",
        "--data.class_path lit_rlhf.data.ArithmeticDataModul (misspelt)",
        ["--data.class_path", "lit_rlhf.data.ArithmeticDataModul"],
        ("ArithmeticDataModul",),
    ),
    Case(
        "sft-missing-model",
        "sft",
        "--model.init_args.model_name_or_path runs/arithmetic/nope/hf (no such folder)",
        ["--model.init_args.model_name_or_path", "runs/arithmetic/nope/hf"],
        ("runs/arithmetic/nope/hf",),
    ),
    Case(
        "sft-seqcls-policy",
        "sft",
        "a reward model's export (sequence classifier) as the model to fine-tune",
        ["--model.init_args.model_name_or_path", "runs/arithmetic/reward/hf"],
        ("ForSequenceClassification",),
    ),
    Case("sft-precision", "sft", "--trainer.precision 17", ["--trainer.precision", "17"], ("precision", "17")),
    Case(
        "sft-accelerator",
        "sft",
        "--trainer.accelerator tpux",
        ["--trainer.accelerator", "tpux"],
        ("accelerator", "tpux"),
    ),
    Case("sft-max-steps-type", "sft", "--trainer.max_steps abc", ["--trainer.max_steps", "abc"], ("max_steps",)),
    Case(
        "sft-misspelt-trainer-key",
        "sft",
        "--trainer.max_stpes 3 (misspelt key)",
        ["--trainer.max_stpes", "3"],
        ("max_stpes",),
    ),
    Case(
        "sft-batch-size", "sft", "--data.init_args.batch_size 0", ["--data.init_args.batch_size", "0"], ("batch_size",)
    ),
    Case(
        "sft-missing-config",
        "sft",
        "--config configs/arithmetic/nope.yaml (no such file)",
        [],
        ("nope.yaml",),
        config="configs/arithmetic/nope.yaml",
    ),
    Case("sft-unknown-command", "sft", "train.py fitt (misspelt command)", [], ("fitt",), command="fitt"),
    Case(
        "sft-missing-ckpt", "sft", "--ckpt_path nope.ckpt (no such file)", ["--ckpt_path", "nope.ckpt"], ("nope.ckpt",)
    ),
    Case(
        "sft-truncated-ckpt",
        "sft",
        "--ckpt_path of a truncated checkpoint file",
        ["--ckpt_path", "{truncated_ckpt}"],
        ("truncated.ckpt",),
    ),
    Case(
        "sft-reward-ckpt",
        "sft",
        "--ckpt_path of the reward stage's checkpoint",
        ["--ckpt_path", "{reward_ckpt}"],
        ("RewardModule", "reward"),
    ),
    Case(
        "sft-ckpt-other-model-config",
        "sft",
        "--ckpt_path of an SFT run with another model_config (hidden_size 48)",
        ["--ckpt_path", "{sft_ckpt}", "--model.init_args.model_config", json.dumps({**TINY_MODEL, "hidden_size": 48})],
        ("hidden_size", "shape", "model_config", "architecture"),
    ),
    Case("sft-devices", "sft", "--trainer.devices 0", ["--trainer.devices", "0"], ("devices",)),
    # -- SFT on local files (configs/custom/sft.yaml) -------------------------------------------------------------
    Case(
        "custom-sft-txt",
        "custom-sft",
        "--data.init_args.train data.txt (a .txt file)",
        ["--data.init_args.train", "{txt_file}"],
        ("data.txt", ".txt"),
        config="configs/custom/sft.yaml",
    ),
    Case(
        "custom-sft-empty",
        "custom-sft",
        "--data.init_args.train empty.jsonl (an empty file)",
        ["--data.init_args.train", "{empty_file}"],
        ("empty.jsonl",),
        config="configs/custom/sft.yaml",
    ),
    Case(
        "custom-sft-missing-file",
        "custom-sft",
        "--data.init_args.train data/nope.jsonl (no such file)",
        ["--data.init_args.train", "data/nope.jsonl"],
        ("data/nope.jsonl",),
        config="configs/custom/sft.yaml",
    ),
    Case(
        "custom-sft-columns",
        "custom-sft",
        "--data.init_args.columns '{prompt: question}' (no such column)",
        ["--data.init_args.train", "{sft_file}", "--data.init_args.columns", '{"prompt": "question"}'],
        ("question",),
        config="configs/custom/sft.yaml",
    ),
    Case(
        "custom-sft-unk",
        "custom-sft",
        "rows whose text the tokenizer maps entirely to <unk>",
        ["--data.init_args.train", "{unk_file}"],
        ("<unk>", "unk", "unknown"),
        config="configs/custom/sft.yaml",
    ),
    Case(
        "custom-sft-bad-row",
        "custom-sft",
        "a row without a response field",
        ["--data.init_args.train", "{no_response_file}"],
        ("response",),
        config="configs/custom/sft.yaml",
    ),
    Case(
        "custom-sft-bad-json",
        "custom-sft",
        "a .jsonl file with a broken line",
        ["--data.init_args.train", "{broken_json_file}"],
        ("broken.jsonl",),
        config="configs/custom/sft.yaml",
    ),
    # -- reward model -----------------------------------------------------------------------------------------------
    opt("reward", "center_coef", "-1"),
    opt("reward", "learning_rate", "0"),
    opt("reward", "prefix_loss_coef", "-0.5"),
    Case(
        "reward-pairs",
        "reward",
        "--data.init_args.pairs bogus",
        ["--data.init_args.pairs", "bogus"],
        ("pairs", "bogus"),
    ),
    Case(
        "reward-sft-ckpt",
        "reward",
        "--ckpt_path of the SFT stage's checkpoint",
        ["--ckpt_path", "{sft_ckpt}"],
        ("SFTModule", "sft"),
    ),
    Case(
        "custom-reward-columns",
        "custom-reward",
        "--data.init_args.columns '{chosen: good}' (no such column)",
        ["--data.init_args.train", "{pairs_file}", "--data.init_args.columns", '{"chosen": "good"}'],
        ("good",),
        config="configs/custom/reward.yaml",
    ),
    # -- PPO --------------------------------------------------------------------------------------------------------
    opt("ppo", "clip_range", "-0.2"),
    opt("ppo", "gamma", "2"),
    opt("ppo", "lam", "5"),
    opt("ppo", "num_minibatches", "64"),
    opt("ppo", "temperature", "0"),
    opt("ppo", "max_new_tokens", "0"),
    opt("ppo", "top_p", "0"),
    opt("ppo", "top_k", "-1"),
    opt("ppo", "kl_coef", "-1"),
    opt("ppo", "kl_estimator", "k2"),
    opt("ppo", "ppo_epochs", "0"),
    opt("ppo", "actor_learning_rate", "-1"),
    Case(
        "ppo-sft-ckpt",
        "ppo",
        "--ckpt_path of the SFT stage's checkpoint",
        ["--ckpt_path", "{sft_ckpt}"],
        ("SFTModule", "sft"),
    ),
    Case(
        "ppo-causal-rm",
        "ppo",
        "the SFT export (a causal LM) as the reward model",
        ["--model.init_args.reward.init_args.model_name_or_path", "runs/arithmetic/sft/hf"],
        ("not a reward model",),
    ),
    Case(
        "ppo-seqcls-policy",
        "ppo",
        "the reward model's export (a sequence classifier) as the policy",
        ["--model.init_args.policy_name_or_path", "runs/arithmetic/reward/hf"],
        ("ForSequenceClassification",),
    ),
    Case(
        "ppo-rm-std0",
        "ppo",
        "a reward model whose recorded normalisation std is 0",
        ["--model.init_args.reward.init_args.model_name_or_path", "{rm_std0}"],
        ("reward_normalization",),
    ),
    Case(
        "ppo-reward-class",
        "ppo",
        "--model.init_args.reward.class_path lit_rlhf.rewards.NoSuchReward",
        ["--model.init_args.reward.class_path", "lit_rlhf.rewards.NoSuchReward"],
        ("NoSuchReward",),
    ),
    Case(
        "ppo-missing-critic",
        "ppo",
        "--model.init_args.critic_name_or_path runs/nope/hf (no such folder)",
        ["--model.init_args.critic_name_or_path", "runs/nope/hf"],
        ("runs/nope/hf",),
    ),
    Case(
        "ppo-missing-policy",
        "ppo",
        "no SFT export yet (policy_name_or_path runs/other/sft/hf)",
        ["--model.init_args.policy_name_or_path", "runs/other/sft/hf"],
        ("runs/other/sft/hf",),
    ),
    Case(
        "ppo-batch-size",
        "ppo",
        "--data.init_args.batch_size -4",
        ["--data.init_args.batch_size", "-4"],
        ("batch_size",),
    ),
    # -- GRPO -------------------------------------------------------------------------------------------------------
    opt("grpo", "num_generations", "1"),
    opt("grpo", "beta", "-0.1"),
    opt("grpo", "loss_averaging", "tokens"),
    opt("grpo", "num_minibatches", "100"),
    opt("grpo", "temperature", "0"),
    opt("grpo", "top_p", "1.5"),
    opt("grpo", "reward_weights", "[1,2]"),
    Case(
        "grpo-sampling-engine-vllm",
        "grpo",
        "--model.init_args.sampling_engine vllm (vLLM not installed)",
        ["--model.init_args.sampling_engine", "vllm"],
        ("sampling_engine",),
    ),
    opt("grpo", "sampling_engine", "vlm"),
    Case(
        "grpo-vllm-without-engine",
        "grpo",
        "--model.init_args.vllm.kv_cache_gib 0.5 (with sampling_engine generate)",
        ["--model.init_args.vllm.kv_cache_gib", "0.5"],
        ("model.init_args.vllm",),
    ),
    Case(
        "grpo-reward-class",
        "grpo",
        "--model.init_args.rewards '[{class_path: lit_rlhf.rewards.ArithmeticVerifier}]' (misspelt)",
        ["--model.init_args.rewards", '[{"class_path": "lit_rlhf.rewards.ArithmeticVerifier"}]'],
        ("ArithmeticVerifier",),
    ),
    Case(
        "grpo-reward-ckpt",
        "grpo",
        "--ckpt_path of the reward stage's checkpoint",
        ["--ckpt_path", "{reward_ckpt}"],
        ("RewardModule", "reward"),
    ),
    Case(
        "grpo-no-rewards",
        "grpo",
        "--model.init_args.rewards [] (no reward source)",
        ["--model.init_args.rewards", "[]"],
        ("rewards", "reward source"),
    ),
]


def prepare(work: str, timeout: float) -> dict[str, str]:
    """Tiny SFT and reward runs in ``work`` and the bad files the cases read; returns the ``{...}`` fields."""
    for stage, extra in (("sft", []), ("reward", [])):
        if os.path.isdir(os.path.join(work, "runs", "arithmetic", stage, "hf")):
            continue  # prepared by an earlier call on the same --work folder
        proc = run_fit(work, ["fit", "--config", config_path(stage), *TINY[stage], *extra], timeout * 3)
        if proc.returncode != 0:
            raise SystemExit(f"the tiny {stage} run that the cases need failed:\n{proc.stderr[-3000:]}")
    paths = {
        "sft_ckpt": "runs/arithmetic/sft/checkpoints/last.ckpt",
        "reward_ckpt": "runs/arithmetic/reward/checkpoints/last.ckpt",
        "truncated_ckpt": "truncated.ckpt",
        "rm_std0": "rm_std0",
        "txt_file": "data.txt",
        "empty_file": "empty.jsonl",
        "sft_file": "sft.jsonl",
        "pairs_file": "pairs.jsonl",
        "unk_file": "unk.jsonl",
        "no_response_file": "no_response.jsonl",
        "broken_json_file": "broken.jsonl",
    }
    with open(os.path.join(work, paths["sft_ckpt"]), "rb") as f:
        whole = f.read()
    with open(os.path.join(work, paths["truncated_ckpt"]), "wb") as f:
        f.write(whole[: len(whole) // 2])
    shutil.copytree(
        os.path.join(work, "runs/arithmetic/reward/hf"), os.path.join(work, paths["rm_std0"]), dirs_exist_ok=True
    )
    config_file = os.path.join(work, paths["rm_std0"], "config.json")
    with open(config_file) as f:
        config = json.load(f)
    config["reward_normalization"] = {"mean": 0.0, "std": 0.0, "num_responses": 8}
    with open(config_file, "w") as f:
        json.dump(config, f)
    rows = [
        {"prompt": f"make a series of arithmetic type which starts at {i}", "response": f"{i} {i + 1}"}
        for i in range(1, 41)
    ]
    write_jsonl(os.path.join(work, paths["sft_file"]), rows)
    with open(os.path.join(work, paths["txt_file"]), "w") as f:
        f.writelines(f"{r['prompt']}\t{r['response']}\n" for r in rows)
    open(os.path.join(work, paths["empty_file"]), "w").close()
    write_jsonl(
        os.path.join(work, paths["unk_file"]), [{"prompt": "bonjour tout le monde", "response": "merci beaucoup"}] * 40
    )
    write_jsonl(os.path.join(work, paths["no_response_file"]), rows[:5] + [{"prompt": "make a series"}] + rows[5:])
    with open(os.path.join(work, paths["broken_json_file"]), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[:3])
        f.write('{"prompt": "make a series", "response": \n')
    pairs = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": "1"} for r in rows]
    write_jsonl(os.path.join(work, paths["pairs_file"]), pairs)
    return paths


def write_jsonl(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def config_path(stage: str) -> str:
    return os.path.join(ROOT, "configs", "arithmetic", f"{stage}.yaml")


def run_fit(work: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python train.py <argv>`` in ``work`` with one thread; a run past ``timeout`` gets return code ``None``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LIT_RLHF_DEBUG", None)
    env["HF_HUB_OFFLINE"] = "1"  # nothing may download
    try:
        return subprocess.run(
            [sys.executable, os.path.join(ROOT, "train.py"), *argv],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        errs = err.stderr.decode() if isinstance(err.stderr, bytes) else err.stderr or ""
        return subprocess.CompletedProcess(err.cmd, None, out, errs)  # type: ignore[arg-type]


def case_argv(case: Case, paths: dict[str, str]) -> list[str]:
    stage = case.stage
    if stage.startswith("custom-"):
        tiny = CUSTOM_SFT if stage == "custom-sft" else CUSTOM_REWARD
        config = os.path.join(ROOT, case.config or "")
    else:
        tiny = TINY[stage]
        config = os.path.join(ROOT, case.config) if case.config else config_path(stage)
    bad = [paths[a[1:-1]] if re.fullmatch(r"\{\w+\}", a) else a for a in case.args]
    # Each case writes its own run folder (runs/<name>/bad-<case>), never into the prepared sft and reward runs.
    version = ["--trainer.logger.init_args.version", f"bad-{case.name}"]
    return [case.command, "--config", config, *tiny, *version, *bad]


def error_lines(stderr: str) -> list[str]:
    """The non-empty stderr lines, without :data:`NOISE`."""
    lines = [line.rstrip() for line in stderr.splitlines() if line.strip()]
    return [line for line in lines if not any(p.search(line) for p in NOISE)]


def classify(case: Case, proc: subprocess.CompletedProcess) -> tuple[str, str]:
    """``(result, first error line)`` of one case (see the module docstring)."""
    if proc.returncode is None:
        return "timeout", ""
    lines = error_lines(proc.stderr)
    first = first_error_line(lines)
    if proc.returncode == 0:
        return "silent", first
    text = proc.stderr + proc.stdout
    named = any(name.lower() in text.lower() for name in case.names)
    if not named:
        return "raw", first
    if "Traceback" in text or len(lines) > 3:
        return "buried", first
    return "clean", first


def first_error_line(lines: list[str]) -> str:
    """The line a user reads as the error: the first ``error:`` line, else the exception line of a traceback."""
    for line in lines:
        if re.search(r"(^|: )error:", line):
            return line
    exception = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    if exception:
        return exception[-1]
    return lines[-1] if lines else ""


def tidy(text: str, work: str, limit: int = 300) -> str:
    """One table cell: the working folder shown as ``.``, no ``|``, at most ``limit`` characters."""
    text = text.replace(work + "/", "").replace(work, ".").replace(ROOT + "/", "").replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def markdown_table(results: list[dict]) -> str:
    counts = {r: sum(1 for x in results if x["result"] == r) for r in ("clean", "buried", "raw", "silent", "timeout")}
    total = len(results)
    others = ", ".join(f"{k}: {v}" for k, v in counts.items() if k != "clean" and v)
    lines = [
        f"{counts['clean']} of {total} bad inputs end in a clean message ({100 * counts['clean'] / total:.0f}%)"
        + (f"; {others}." if others else "."),
        "",
        "| # | stage | input | result | message seen |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, start=1):
        lines.append(f"| {i} | {r['stage']} | {r['input']} | {r['result']} | {r['message']} |")
    return "\n".join(lines) + "\n"


START, END = "<!-- bad-inputs table: start -->", "<!-- bad-inputs table: end -->"


def write_docs(path: str, table: str) -> None:
    """Replace the text between :data:`START` and :data:`END` in ``path`` with ``table``."""
    with open(path) as f:
        text = f.read()
    if START not in text or END not in text:
        raise SystemExit(f"{path} has no {START} ... {END} markers for the table")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(path, "w") as f:
        f.write(f"{head}{START}\n{table}{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="run the cases whose stage or name contains this text")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument("--docs", help="write the table between the markers of this markdown file")
    parser.add_argument("--json", help="write every result (with the whole stderr) to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary working folder")
    parser.add_argument("--work", help="working folder to use (and keep) instead of a temporary one")
    args = parser.parse_args()
    cases = [c for c in CASES if not args.only or args.only in c.stage or args.only in c.name]
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="lit_rlhf_bad_inputs_")
    os.makedirs(work, exist_ok=True)
    args.keep = args.keep or bool(args.work)
    start = time.time()
    try:
        paths = prepare(work, args.timeout)
        print(f"prepared the tiny sft and reward runs in {time.time() - start:.0f} s ({work})", file=sys.stderr)
        results = []
        for case in cases:
            t0 = time.time()
            proc = run_fit(work, case_argv(case, paths), args.timeout)
            result, message = classify(case, proc)
            run_folders = glob.glob(os.path.join(work, "runs", "*", f"bad-{case.name}"))
            for folder in run_folders:
                shutil.rmtree(folder, ignore_errors=True)
            results.append(
                {
                    "name": case.name,
                    "stage": case.stage,
                    "input": tidy(case.input, work),
                    "result": result,
                    "message": tidy(message, work),
                    "seconds": round(time.time() - t0, 1),
                    "returncode": proc.returncode,
                    "left_run_folder": bool(run_folders),
                    "stderr": tidy(proc.stderr[-4000:], work, 4000) if result != "clean" else "",
                }
            )
            print(f"{result:7s} {time.time() - t0:5.1f}s {case.name}: {message[:150]}", file=sys.stderr)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    table = markdown_table(results)
    print(table)
    if args.docs:
        write_docs(args.docs, table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
