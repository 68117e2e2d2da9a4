"""Helpers for tests: tiny Hugging Face models saved to folders, event-file readers, CLI argument lists."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import lightning as L
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tokenizers import decoders as tk_decoders
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tests.conftest import TINY_MODEL_CONFIG

SFT_METRICS = (
    "train/loss",
    "train/perplexity",
    "train/token_accuracy",
    "train/lr",
    "val/loss",
    "val/perplexity",
    "val/token_accuracy",
    "val/exact_match",
    "val/graded_score",
    "val/eos_rate",
)
"""Every scalar the SFT module logs on the arithmetic task."""


def quiet_trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    """A Trainer for tests: ``max_steps`` under ``tmp_path``, no logger, progress bar, summary or checkpoints."""
    options = {
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        **kwargs,
    }
    return L.Trainer(max_steps=max_steps, default_root_dir=tmp_path, **options)


def save_tiny_gpt2(path: str, texts: list[str]) -> str:
    """A 2-layer GPT-2 with a byte-level BPE tokenizer trained on ``texts``, with no pad token (like GPT-2)."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = tk_decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def fixture_texts(path: str) -> list[str]:
    with open(path) as f:
        return [" ".join(json.loads(line).values()) for line in f]


def tiny_cli_args(config: str, run_dir: str, max_steps: int = 6) -> list[str]:
    """``fit`` arguments that run ``config`` with the tiny model and a small data set into ``run_dir``."""
    return [
        "fit",
        "--config",
        config,
        "--model.init_args.model_config",
        json.dumps(TINY_MODEL_CONFIG),
        "--data.init_args.num_train",
        "128",
        "--data.init_args.num_val",
        "16",
        "--data.init_args.batch_size",
        "16",
        "--trainer.max_steps",
        str(max_steps),
        "--trainer.val_check_interval",
        "3",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.logger.init_args.save_dir",
        os.path.dirname(os.path.dirname(run_dir)),
        "--trainer.logger.init_args.name",
        os.path.basename(os.path.dirname(run_dir)),
        "--trainer.logger.init_args.version",
        os.path.basename(run_dir),
    ]


def read_events(run_dir: str) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[str]]]:
    """Scalars ``{tag: [(step, value)]}`` and texts ``{tag: [text]}`` of every event file in ``run_dir``."""
    scalars: dict[str, list[tuple[int, float]]] = {}
    texts: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
        events = EventAccumulator(path, size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
        for tag in events.Tags()["tensors"]:
            texts.setdefault(tag, []).extend(e.tensor_proto.string_val[0].decode() for e in events.Tensors(tag))
    return scalars, texts


def word_count_reward(prompts: list[str], completions: list[str], rows: list[dict]) -> list[float]:
    """A plain reward function for the tests that pick one from YAML: minus the number of words."""
    return [-float(len(c.split())) for c in completions]


def run_two_rank_script(script: str, args: list[str], out_dir) -> list[dict]:
    """Run ``script args...``, a standalone 2-process CPU (gloo) DDP run that writes ``<out_dir>/rank<r>.json``, and
    return both ranks' records. The repository root is put on ``PYTHONPATH`` (Lightning re-runs the script as rank 1).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, script, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return [json.load(open(os.path.join(out_dir, f"rank{rank}.json"))) for rank in range(2)]


class ExitAfterStep(L.Callback):
    """Ends the process right after optimizer step ``step`` and the checkpoint written at it, as a kill would, with
    that checkpoint and the logger's events flushed first (``os._exit``: no end-of-training hooks, no checkpoint at
    the end)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            flush = getattr(trainer.strategy.checkpoint_io, "flush", None)
            if flush is not None:
                flush()  # lit_rlhf writes a step's checkpoint when the next step starts
            if trainer.logger is not None:
                trainer.logger.experiment.flush()
            os._exit(0)


def needs_vllm():
    """The marks of a test that runs vLLM: ``vllm`` (``make test-vllm``) and a skip where vLLM is not installed."""
    import pytest

    from lit_rlhf.engines.settings import vllm_available

    return [pytest.mark.vllm, pytest.mark.skipif(not vllm_available(), reason="needs vLLM: make test-vllm")]
