"""What the benchmark scripts share: the machine line and one timed ``train.py fit`` run in a temporary folder."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

import lightning.pytorch as pl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine_line() -> str:
    import torch

    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        f", {torch.get_num_threads()} threads"
    )


def timed_fit(config: str, save_dir: str, *extra: str) -> float:
    """Run the README's ``python train.py fit --config <config>`` with runs under ``save_dir``; wall seconds."""
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "train.py",
            "fit",
            "--config",
            config,
            "--trainer.logger.init_args.save_dir",
            save_dir,
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def timed_lit_run(
    config: str, save_dir: str, *overrides: str, budget_s: float | None = None, min_batches: int = 0
) -> dict:
    """:func:`timed_fit` with a :class:`TrainTimer` (and its time budget, if any), then what the run left.

    Returns:
        ``{"wall": process seconds, "timer": the TrainTimer's JSON, "run_dir": the run folder (its ``hf/`` export),
        "scalars": {tag: [(step, value)]}, "config": the resolved config.yaml}``.
    """
    import glob
    import json

    from tests.helpers import read_events

    os.makedirs(save_dir, exist_ok=True)
    timer_path = os.path.join(save_dir, "train_timer.json")
    timer_args = [
        "--trainer.callbacks+=benchmarks.common.TrainTimer",
        f"--trainer.callbacks.init_args.path={timer_path}",
    ]
    if budget_s is not None:
        timer_args += [
            f"--trainer.callbacks.init_args.budget_s={budget_s}",
            f"--trainer.callbacks.init_args.min_batches={min_batches}",
        ]
    wall = timed_fit(config, save_dir, *overrides, *timer_args)
    events = glob.glob(os.path.join(save_dir, "**", "events.out.tfevents.*"), recursive=True)
    if not events:
        sys.exit(f"no TensorBoard events under {save_dir}")
    run_dir = os.path.dirname(events[0])
    with open(timer_path) as f:
        timer = json.load(f)
    return {
        "wall": wall,
        "timer": timer,
        "run_dir": run_dir,
        "scalars": read_events(run_dir)[0],
        "config": read_config(os.path.join(run_dir, "config.yaml")),
    }


def read_config(path: str) -> dict:
    """A YAML config as a dict."""
    import yaml

    with open(path) as f:
        return yaml.safe_load(f)


def exact_match_rate(completions: list[str], heldout: list[dict]) -> float:
    """Fraction of ``completions`` that the arithmetic verifier finds exactly right for ``heldout[i]["answer"]``."""
    from lit_rlhf.data.arithmetic_task import exact_match

    return sum(exact_match(c, row["answer"]) for c, row in zip(completions, heldout, strict=True)) / len(heldout)


def write_arithmetic_prompts(data_dir: str, policy: str, num_val: int, data_seed: int) -> list[dict]:
    """Training and held-out arithmetic prompts as lit_rlhf tokenizes them (with ``policy``'s tokenizer), written to
    ``<data_dir>/train.jsonl`` and ``heldout.jsonl`` as ``{prompt, prompt_ids, answer}`` rows for a TRL worker;
    returns the held-out rows."""
    import json

    from lit_rlhf.data.arithmetic import ArithmeticDataModule
    from lit_rlhf.models.loading import load_tokenizer

    data = ArithmeticDataModule(format="prompt", num_val=num_val, seed=data_seed, max_length=64)
    data.connect(load_tokenizer(policy))
    data.setup("fit")
    heldout = []
    for split, examples in (("train", data.train_dataset), ("heldout", data.val_dataset)):
        with open(os.path.join(data_dir, f"{split}.jsonl"), "w") as f:
            for ex in examples:
                row = {"prompt": ex["row"]["prompt"], "prompt_ids": ex["prompt_ids"], "answer": ex["row"]["answer"]}
                f.write(json.dumps(row) + "\n")
                if split == "heldout":
                    heldout.append(row)
    print(f"prompts: {len(data.train_dataset)} training, {len(heldout)} held-out (data seed {data_seed})")
    return heldout


def same_time_table(lit_rows: list[dict], unit: str) -> list[str]:
    """Markdown lines of lit_rlhf's gold after TRL's training seconds (rows with a ``same_time`` record holding
    ``budget_s``, ``train_s``, ``<unit>`` and ``after``); no lines when no row has one."""
    timed = [r for r in lit_rows if r.get("same_time")]
    if not timed:
        return []
    lines = [
        "",
        "lit_rlhf after the same training seconds as TRL's run of the same seed:",
        "",
        f"| seed | TRL train s (budget) | lit_rlhf train s | lit_rlhf {unit} | lit_rlhf exact-match after |",
        "|---|---|---|---|---|",
    ]
    for r in timed:
        t = r["same_time"]
        lines.append(
            f"| {r['system'].rsplit(' ', 1)[-1]} | {t['budget_s']:.1f} | {t['train_s']:.1f} | {t[unit]} "
            f"| {t['after']:.1%} |"
        )
    return lines


def use_threads(threads: int) -> None:
    """Torch/OpenMP threads for this process and every child (``train.py``, the TRL worker); work from the repo root."""
    import torch
    import transformers

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    transformers.logging.disable_progress_bar()
    os.chdir(ROOT)


def load_warning(detail: str = "timings are not those of a quiet machine (accuracies are unaffected)") -> str:
    """A warning line when the 1-minute load average says other processes share the CPU, else ``""``."""
    load = os.getloadavg()[0]
    if load <= 0.5:
        return ""
    return f"WARNING: load average {load:.1f} at start: other processes share the CPU; {detail}\n"


def print_machine() -> None:
    """Print :func:`machine_line` and, when other processes share the CPU, :func:`load_warning`."""
    print(machine_line())
    warning = load_warning()
    if warning:
        print(warning)


def print_step_medians(times: dict[str, list[float]], digits: int = 1) -> None:
    """For each setting (in order) of ``times`` (milliseconds per step, one entry per round): its median, every
    round's figure, and its speed-up over the first setting (ratio of medians)."""
    import statistics

    names = list(times)
    base = statistics.median(times[names[0]])
    for name in names:
        median = statistics.median(times[name])
        runs = ", ".join(f"{t:.{digits}f}" for t in times[name])
        print(f"{name}: {median:.{digits}f} ms/step median ({runs}); {base / median:.2f}x of {names[0]}")


def run_worker(command: list[str], out: str, log_path: str) -> tuple[dict, float]:
    """Run a TRL worker (``command``: its python, script and arguments); its JSON result from ``out`` and the
    process wall seconds. A failed worker stops the benchmark with the end of its log."""
    import json

    start = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-4000:]
        sys.exit(f"TRL worker failed (exit {done.returncode}); end of its output:\n{tail}")
    with open(out) as f:
        return json.load(f), wall


def report(out_path: str | None, *sections: str) -> None:
    """Print ``sections``; with ``out_path``, also append them to that markdown file under the machine line."""
    import datetime

    text = "\n\n".join(s.strip("\n") for s in sections if s)
    print(text)
    if out_path:
        with open(out_path, "a") as f:
            f.write(f"\n{machine_line()}; measured {datetime.date.today().isoformat()}\n\n{text}\n")


class TrainTimer(pl.Callback):
    """Lightning callback (``--trainer.callbacks+=benchmarks.common.TrainTimer``): training seconds from the first
    training batch's start to the last one's end, less the validation runs in between.

    Each validation during ``fit`` is recorded as ``{"batches", "train_s", "metrics": {val/...}}`` so a benchmark
    can read the gold metric after a given number of batches or seconds. With ``budget_s``, training stops (and
    validates, as Lightning does on ``should_stop``) when one more batch, at the mean batch time so far, would
    take the training seconds past it, but not before ``min_batches`` batches. With ``path``, the totals
    and the validations are written there as JSON at the end of ``fit``.
    """

    def __init__(self, path: str | None = None, budget_s: float | None = None, min_batches: int = 0) -> None:
        self.path = path
        self.budget_s = budget_s
        self.min_batches = min_batches
        self.start: float | None = None
        self.end: float | None = None
        self.batches = 0
        self.val_s = 0.0
        self._val_s_at_end = 0.0
        self._val_start: float | None = None
        self.validations: list[dict] = []

    def on_train_batch_start(self, *args) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, *args) -> None:
        self.end = time.perf_counter()
        self._val_s_at_end = self.val_s
        self.batches += 1
        # stop before the next batch would overrun the budget (at the mean batch time so far)
        over = self.budget_s is not None and self.seconds * (self.batches + 1) / self.batches > self.budget_s
        if over and self.batches >= self.min_batches:
            trainer.should_stop = True

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.start is not None:  # not the sanity check before the first batch
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_start is None:
            return
        self.val_s += time.perf_counter() - self._val_start
        self._val_start = None
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/") and v.numel() == 1}
        self.validations.append({"batches": self.batches, "train_s": self.seconds, "metrics": metrics})

    @property
    def seconds(self) -> float:
        return self.end - self.start - self._val_s_at_end

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.path and trainer.is_global_zero and self.start is not None:
            import json

            with open(self.path, "w") as f:
                json.dump({"train_s": self.seconds, "batches": self.batches, "validations": self.validations}, f)


def lit_versions() -> str:
    """The versions line of lit_rlhf's own venv."""
    import lightning
    import torch
    import transformers

    return (
        f"lit_rlhf venv: lightning {lightning.__version__}, transformers {transformers.__version__}, torch "
        f"{torch.__version__}"
    )


def held_out_arithmetic(policy: str, num_val: int, data_seed: int):
    """A policy, its tokenizer and the arithmetic held-out set as one batch: ``(model, tokenizer, batch)``.

    The model is in eval mode; ``batch`` holds all ``num_val`` left-padded prompts and their ``rows``.
    """
    from lit_rlhf.data.arithmetic import ArithmeticDataModule
    from lit_rlhf.models.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(policy)
    model = load_causal_lm(policy, tokenizer).eval()
    data = ArithmeticDataModule(num_val=num_val, seed=data_seed, eval_batch_size=num_val)
    data.connect(tokenizer)
    data.setup("validate")
    return model, tokenizer, next(iter(data.val_dataloader()))


def greedy_arithmetic(model, tokenizer, batch, max_new_tokens: int) -> tuple[list[str], list[bool]]:
    """The greedy answers to ``batch`` (from :func:`held_out_arithmetic`) and whether each is exactly right."""
    from lit_rlhf.data.arithmetic_task import exact_match
    from lit_rlhf.generation import generate_for_batch

    _, texts = generate_for_batch(model, tokenizer, batch, max_new_tokens)
    return texts, [bool(exact_match(text, row["answer"])) for text, row in zip(texts, batch["rows"])]


def sample_answers(model, tokenizer, input_ids, attention_mask, max_new_tokens: int, temperature: float):
    """One sampled answer per left-padded prompt row: ``(Generation, decoded texts)``, without gradients."""
    import torch

    from lit_rlhf.generation import decode_responses, generate

    with torch.no_grad():
        generation = generate(
            model,
            input_ids,
            attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            do_sample=True,
            temperature=temperature,
        )
    return generation, decode_responses(tokenizer, generation)


def add_held_out_arguments(parser) -> None:
    """``--num-val``, ``--data-seed`` and ``--threads``: the held-out set of :func:`held_out_arithmetic`, and torch
    threads."""
    parser.add_argument("--num-val", type=int, default=512)
    parser.add_argument("--data-seed", type=int, default=1234, help="ArithmeticDataModule seed (held-out split)")
    parser.add_argument("--threads", type=int, default=2)
