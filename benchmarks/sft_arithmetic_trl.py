"""SFT side by side on the arithmetic task: TRL's ``SFTTrainer`` (``trl==1.16``) against lit_rlhf's ``SFTModule``
(``configs/arithmetic/sft.yaml``), from the same freshly initialised tiny Llama, on the same rows and settings.

Setup, once, from the repository root: TRL gets its own virtualenv beside the repository (``../trl116-venv``, or
``--trl-python``), so it never touches ``.venv``. Pin torch first (an unpinned torch pulls several GB of CUDA
packages; on a CPU machine without the local CPU wheel add ``--index-url https://download.pytorch.org/whl/cpu`` to the
first install, see the README):

    python3 -m venv ../trl116-venv
    ../trl116-venv/bin/pip install torch==2.13.0
    ../trl116-venv/bin/pip install torch==2.13.0 "trl==1.16.*" transformers==5.23.0 datasets accelerate

Run with the repository's ``.venv``:

    .venv/bin/python benchmarks/sft_arithmetic_trl.py --threads 1                  # the config's 600 steps, 3 runs
    .venv/bin/python benchmarks/sft_arithmetic_trl.py --steps 20 --runs 1          # a quick check
    .venv/bin/python benchmarks/sft_arithmetic_trl.py --runs 3 --out docs/benchmarks.md
    .venv/bin/python benchmarks/sft_arithmetic_trl.py --runs 5 --vary-seed          # exact-match over 5 seeds

What runs (per run; runs alternate TRL, lit_rlhf):

1. This script builds the model as the config does (``tiny-arithmetic``: ``build_word_tokenizer`` +
   ``build_tiny_llama`` after seeding torch with the config's ``seed_everything``) and saves it with
   ``save_pretrained`` to a temporary folder: both systems start from these weights. It writes the SFT rows of
   ``ArithmeticDataModule(format="sft")`` (the config's data settings) as TRL prompt-completion JSON lines.
2. ``benchmarks/_trl_sft_worker.py`` runs in the TRL venv: ``SFTTrainer`` with ``completion_only_loss=True``, no
   packing, fp32, no gradient checkpointing, the config's batch size, steps, LR, weight decay, warmup, schedule
   (``cosine_with_min_lr``) and gradient clipping; it checks that TRL's tokenization gives lit_rlhf's token ids and
   supervises the same tokens, then answers the 512 held-out prompts greedily and saves the trained model. Timed:
   ``trainer.train()`` alone.
3. ``python train.py fit --config configs/arithmetic/sft.yaml --model.init_args.model_name_or_path <that folder>``,
   validating once, after the last step (no sanity check). Timed: first training batch start to last training
   batch end (a callback), so loading, validation and export are left out. Held-out exact-match: its
   ``val/exact_match`` (greedy, ``max_new_tokens`` from the config).

samples/s = steps x batch size / training seconds. Held-out exact-match uses lit_rlhf's ``arithmetic_task.exact_match``
for both systems; "one scorer" is the exact-match of both systems' final weights (TRL's saved model, lit_rlhf's
``hf/`` export) by the same code, lit_rlhf's greedy generation over all held-out prompts as one batch. The tables
give the median over ``--runs``, the ratio of medians, and per run the two systems' one-scorer exact-match and their
difference (with ``--vary-seed``, run ``r`` starts both from the model of seed ``seed + r``; TRL's batch order
follows that seed, lit_rlhf's the data seed of the config, so lit_rlhf's order is the same in every run).

Whether the two systems compute the same training steps at all: ``benchmarks/sft_trl_parity.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import (  # noqa: E402
    exact_match_rate,
    lit_versions,
    load_warning,
    machine_line,
    read_config,
    report,
    run_worker,
    timed_lit_run,
    use_threads,
)

WORKER = os.path.join(ROOT, "benchmarks", "_trl_sft_worker.py")
DEFAULT_TRL_PYTHON = os.path.join(os.path.dirname(ROOT), "trl116-venv", "bin", "python")
SETUP = (
    "python3 -m venv ../trl116-venv && ../trl116-venv/bin/pip install torch==2.13.0 && "
    '../trl116-venv/bin/pip install torch==2.13.0 "trl==1.16.*" transformers==5.23.0 datasets accelerate'
)

DIFFERENCES = """\
What differs between the two rows (not tuned away here):

- Batch order: each library shuffles the {num_train} training rows with its own sampler and RNG stream.
- Warmup: lit_rlhf's step s of warmup uses (s+1)/(warmup+1) of the LR (never 0); Hugging Face's uses s/warmup (the
  first step has LR 0). After warmup both follow cosine to {min_lr_ratio} x LR at step {steps}.
- Per-step extras: TRL's SFTTrainer computes entropy and token accuracy each step; lit_rlhf logs loss, perplexity,
  token accuracy and LR each step.

The same in both (benchmarks/sft_trl_parity.py checks it): the loss (the sum of the completion tokens' cross-entropy,
EOS included, over the batch's supervised-token count), its gradients (padded and padding-free), the AdamW groups
(no decay on biases and norms), betas, eps and kernel (fused), clipping at norm 1, fp32. Given Hugging Face's warmup
and the same batches, lit_rlhf takes TRL's training steps to float rounding.
"""


def save_fresh_model(folder: str, seed: int) -> None:
    """The config's ``tiny-arithmetic`` model, initialised as ``train.py`` does after ``seed_everything(seed)``."""
    import lightning.pytorch as pl

    from lit_rlhf.models.tiny import build_tiny_llama, build_word_tokenizer

    pl.seed_everything(seed, verbose=False)
    tokenizer = build_word_tokenizer()
    model = build_tiny_llama(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_rows(data_dir: str, model_dir: str, data_args: dict) -> tuple[list[dict], int]:
    """SFT rows as lit_rlhf tokenizes them, into ``train.jsonl`` (prompt-completion) and ``heldout.jsonl``."""
    from lit_rlhf.data.arithmetic import ArithmeticDataModule
    from lit_rlhf.models.loading import load_tokenizer

    data = ArithmeticDataModule(
        format="sft", num_val=data_args["num_val"], seed=data_args.get("seed", 1234), max_length=data_args["max_length"]
    )
    data.connect(load_tokenizer(model_dir))
    data.setup("fit")
    with open(os.path.join(data_dir, "train.jsonl"), "w") as f:
        for ex in data.train_dataset:
            row = {
                "prompt": ex["row"]["prompt"],
                "completion": " " + ex["row"]["response"],  # SFTTrainer concatenates prompt + completion, adds EOS
                "prompt_ids": ex["prompt_ids"],
                "completion_ids": ex["response_ids"],
            }
            f.write(json.dumps(row) + "\n")
    heldout = []
    with open(os.path.join(data_dir, "heldout.jsonl"), "w") as f:
        for ex in data.val_dataset:
            row = {"prompt": ex["row"]["prompt"], "prompt_ids": ex["prompt_ids"], "answer": ex["row"]["answer"]}
            f.write(json.dumps(row) + "\n")
            heldout.append(row)
    return heldout, len(data.train_dataset)


def trl_command(trl_python: str, s: dict, tmp: str, model_dir: str, out: str, seed: int, threads: int) -> list[str]:
    """The command line of ``_trl_sft_worker.py`` for the settings ``s`` (see :func:`main`)."""
    return [
        trl_python,
        WORKER,
        "--data-dir",
        tmp,
        "--out",
        out,
        "--model",
        model_dir,
        "--steps",
        str(s["steps"]),
        "--batch-size",
        str(s["batch_size"]),
        "--learning-rate",
        str(s["learning_rate"]),
        "--weight-decay",
        str(s["weight_decay"]),
        "--warmup-steps",
        str(s["warmup_steps"]),
        "--lr-schedule",
        s["lr_schedule"],
        "--min-lr-ratio",
        str(s["min_lr_ratio"]),
        "--max-grad-norm",
        str(s["max_grad_norm"]),
        "--max-length",
        str(s["max_length"]),
        "--max-new-tokens",
        str(s["max_new_tokens"]),
        "--seed",
        str(seed),
        "--threads",
        str(threads),
    ]


def run_trl(
    args: argparse.Namespace, s: dict, tmp: str, model_dir: str, heldout: list[dict], run: int, seed: int
) -> dict:
    out = os.path.join(tmp, f"trl_result_{run}.json")
    trained = os.path.join(tmp, f"trl_model_{run}")
    command = trl_command(args.trl_python, s, tmp, model_dir, out, seed, args.threads) + ["--save-model", trained]
    result, wall = run_worker(command, out, os.path.join(tmp, f"trl_worker_{run}.log"))
    losses = [entry["loss"] for entry in result["logs"] if "loss" in entry]
    return {
        "system": f"TRL {result['versions']['trl']} SFTTrainer",
        "steps": result["steps"],
        "train_s": result["train_s"],
        "samples_per_s": result["samples"] / result["train_s"],
        "exact_match": exact_match_rate(result["completions"], heldout),
        "exact_match_one_scorer": one_scorer(trained, s),
        "seed": seed,
        "eos_rate": sum(result["eos"]) / len(heldout),
        "final_loss": losses[-1] if losses else float("nan"),
        "process_s": wall,
        "detail": result,
    }


def one_scorer(policy: str, s: dict) -> float:
    """Held-out exact-match of the trained model in ``policy`` (a ``save_pretrained`` folder), by the same code for
    both systems: lit_rlhf's greedy generation on all held-out prompts as one batch, and its verifier."""
    from benchmarks.common import greedy_arithmetic, held_out_arithmetic

    model, tokenizer, batch = held_out_arithmetic(policy, s["num_val"], s["data_seed"])
    _, right = greedy_arithmetic(model, tokenizer, batch, s["max_new_tokens"])
    return sum(right) / len(right)


def run_lit(args: argparse.Namespace, s: dict, tmp: str, model_dir: str, run: int, seed: int) -> dict:
    save_dir = os.path.join(tmp, f"lit_{run}")
    overrides = [
        "--seed_everything",
        str(seed),
        "--model.init_args.model_name_or_path",
        model_dir,
        "--trainer.max_steps",
        str(s["steps"]),
        "--trainer.val_check_interval",
        str(s["steps"]),
        "--trainer.check_val_every_n_epoch",
        "null",
        "--trainer.num_sanity_val_steps",
        "0",
        *args.extra,
    ]
    lit_run = timed_lit_run(args.lit_config, save_dir, *overrides)
    wall, timer, scalars = lit_run["wall"], lit_run["timer"], lit_run["scalars"]
    last = {tag: values[-1][1] for tag, values in scalars.items() if values}
    return {
        "system": "lit_rlhf SFTModule",
        "steps": timer["batches"],
        "train_s": timer["train_s"],
        "samples_per_s": timer["batches"] * s["batch_size"] / timer["train_s"],
        "exact_match": last.get("val/exact_match", float("nan")),
        "exact_match_one_scorer": one_scorer(os.path.join(lit_run["run_dir"], "hf"), s),
        "seed": seed,
        "eos_rate": last.get("val/eos_rate", float("nan")),
        "final_loss": last.get("train/loss", float("nan")),
        "process_s": wall,
    }


def markdown(rows_by_system: dict[str, list[dict]]) -> str:
    lines = [
        "| system | runs | steps | train s (median) | samples/s (median) | samples/s (all runs) | held-out exact-match "
        "(median) | exact-match (all runs) | one scorer (all runs) | EOS rate | last logged train loss "
        "| process wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    medians = {}
    for system, rows in rows_by_system.items():
        speed = statistics.median(r["samples_per_s"] for r in rows)
        em = statistics.median(r["exact_match"] for r in rows)
        medians[system] = speed
        all_speeds = ", ".join(f"{r['samples_per_s']:.0f}" for r in rows)
        all_em = ", ".join(f"{r['exact_match']:.1%}" for r in rows)
        one_scorer_em = ", ".join(f"{r['exact_match_one_scorer']:.1%}" for r in rows)
        lines.append(
            f"| {system} | {len(rows)} | {rows[0]['steps']} | {statistics.median(r['train_s'] for r in rows):.1f} "
            f"| {speed:.0f} | {all_speeds} | {em:.1%} | {all_em} | {one_scorer_em} "
            f"| {statistics.median(r['eos_rate'] for r in rows):.1%} "
            f"| {statistics.median(r['final_loss'] for r in rows):.4f} "
            f"| {statistics.median(r['process_s'] for r in rows):.0f} |"
        )
    if len(medians) == 2:
        (a, va), (b, vb) = medians.items()
        lines.append("")
        lines.append(f"samples/s ratio, {b} / {a} (medians): {vb / va:.2f}x")
        lines += ["", *seed_table(rows_by_system[a], rows_by_system[b], a, b)]
    return "\n".join(lines)


def seed_table(first: list[dict], second: list[dict], first_name: str, second_name: str) -> list[str]:
    """Per-run exact-match of both systems (the one scorer), their difference, and its mean and spread."""
    lines = [
        f"| run | seed | {first_name} | {second_name} | difference |",
        "|---|---|---|---|---|",
    ]
    diffs = []
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        diff = b["exact_match_one_scorer"] - a["exact_match_one_scorer"]
        diffs.append(diff)
        lines.append(
            f"| {i + 1} | {a['seed']} | {a['exact_match_one_scorer']:.1%} | {b['exact_match_one_scorer']:.1%} "
            f"| {diff * 100:+.1f} |"
        )
    for name, rows in ((first_name, first), (second_name, second)):
        values = [r["exact_match_one_scorer"] for r in rows]
        spread = f", standard deviation {statistics.stdev(values):.1%}" if len(values) > 1 else ""
        lines.append(
            f"| {name} | | mean {statistics.mean(values):.1%}, median {statistics.median(values):.1%}{spread} | | |"
        )
    if len(diffs) > 1:
        error = statistics.stdev(diffs) / len(diffs) ** 0.5
        lines.append(
            f"| difference | | | | mean {statistics.mean(diffs) * 100:+.1f} points, standard error {error * 100:.1f} "
            f"({sum(d > 0 for d in diffs)} of {len(diffs)} runs above) |"
        )
    return lines


def config_settings(lit_config: str, steps: int | None) -> tuple[dict, dict]:
    """The lit_rlhf config and the settings both systems get from it (``steps`` overrides its ``max_steps``)."""
    config = read_config(lit_config)
    model_args, data_args = config["model"]["init_args"], config["data"]["init_args"]
    if model_args.get("model_name_or_path", "tiny-arithmetic") != "tiny-arithmetic" or model_args.get("model_config"):
        sys.exit(f"{lit_config} does not build the default tiny-arithmetic model; this benchmark expects it")
    return config, {
        "steps": steps or config["trainer"]["max_steps"],
        "batch_size": data_args["batch_size"],
        "learning_rate": model_args["learning_rate"],
        "weight_decay": model_args.get("weight_decay", 0.0),
        "warmup_steps": model_args.get("warmup_steps", 0),
        "lr_schedule": model_args.get("lr_schedule", "cosine"),
        "min_lr_ratio": model_args.get("min_lr_ratio", 0.0),
        "max_grad_norm": config["trainer"].get("gradient_clip_val") or 0.0,
        "max_length": data_args["max_length"],
        "max_new_tokens": model_args.get("max_new_tokens", 64),
        "seed": config.get("seed_everything", 1234),
        "num_val": data_args["num_val"],
        "data_seed": data_args.get("seed", 1234),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--trl-python",
        default=DEFAULT_TRL_PYTHON,
        help="python of the TRL venv (default: ../trl116-venv/bin/python beside the repository; see the setup)",
    )
    parser.add_argument("--lit-config", default="configs/arithmetic/sft.yaml", help="lit_rlhf SFT config")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's max_steps)")
    parser.add_argument("--runs", type=int, default=3, help="runs per system (medians are reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per process")
    parser.add_argument(
        "--vary-seed",
        action="store_true",
        help="run r uses seed + r (start model; TRL's data order) for both systems: medians over seeds, not only "
        "timings",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the start model and of the runs (default: the config's)"
    )
    parser.add_argument("--skip-lit", action="store_true", help="run the TRL side only")
    parser.add_argument("--skip-trl", action="store_true", help="run the lit_rlhf side only")
    parser.add_argument("--out", default=None, help="append the table and notes to this markdown file")
    parser.add_argument("extra", nargs="*", help="more CLI arguments for lit_rlhf's train.py, after --")
    args = parser.parse_args()

    use_threads(args.threads)
    if not args.skip_trl and not os.path.isfile(args.trl_python):
        sys.exit(f"{args.trl_python} not found; set up TRL's venv from the repository root:\n  {SETUP}")

    config, s = config_settings(args.lit_config, args.steps)
    data_args = config["data"]["init_args"]
    if args.seed is not None:
        s["seed"] = args.seed

    seed_note = " + run index" if args.vary_seed else ""
    busy = load_warning()
    print(machine_line())
    print(busy, end="")
    settings = (
        f"settings ({args.lit_config}): fresh tiny-arithmetic Llama (seed {s['seed']}{seed_note}), "
        f"{s['steps']} steps of batch {s['batch_size']}, AdamW lr {s['learning_rate']} "
        f"weight decay {s['weight_decay']}, {s['warmup_steps']} warmup steps then {s['lr_schedule']} "
        f"to {s['min_lr_ratio']} x lr, clip {s['max_grad_norm']}, max length {s['max_length']}, fp32, "
        f"{args.threads} thread(s); held-out: {data_args['num_val']} prompts, greedy, "
        f"{s['max_new_tokens']} new tokens"
    )
    print(settings, flush=True)
    rows: dict[str, list[dict]] = {}
    versions_line = ""
    with tempfile.TemporaryDirectory(prefix="sft_trl_bench_") as tmp:
        model_dir = os.path.join(tmp, "fresh_model")
        save_fresh_model(model_dir, s["seed"])
        heldout, num_train = write_rows(tmp, model_dir, data_args)
        print(f"rows: {num_train} training, {len(heldout)} held-out; start model saved to {model_dir}", flush=True)
        for run in range(args.runs):
            seed = s["seed"] + run if args.vary_seed else s["seed"]
            if seed != s["seed"]:  # another start model and data order for both systems
                model_dir = os.path.join(tmp, f"fresh_model_{seed}")
                save_fresh_model(model_dir, seed)
            if not args.skip_trl:
                row = run_trl(args, s, tmp, model_dir, heldout, run, seed)
                rows.setdefault(row["system"], []).append(row)
                v = row["detail"]["versions"]
                versions_line = (
                    f"TRL venv: trl {v['trl']}, transformers {v['transformers']}, torch {v['torch']}, datasets "
                    f"{v['datasets']}, {v['threads']} thread(s); optimizer {row['detail']['settings']['optimizer']}, "
                    f"scheduler {row['detail']['settings']['lr_scheduler_type']} "
                    f"{row['detail']['settings']['lr_scheduler_kwargs']}; tokenization identical to lit_rlhf on "
                    f"{row['detail']['settings']['tokenization']['rows_checked']} rows"
                )
                print(
                    f"run {run + 1}: {row['system']}: {row['train_s']:.1f}s, {row['samples_per_s']:.0f} samples/s, "
                    f"exact-match {row['exact_match']:.1%}",
                    flush=True,
                )
            if not args.skip_lit:
                row = run_lit(args, s, tmp, model_dir, run, seed)
                rows.setdefault(row["system"], []).append(row)
                print(
                    f"run {run + 1}: {row['system']}: {row['train_s']:.1f}s, {row['samples_per_s']:.0f} samples/s, "
                    f"exact-match {row['exact_match']:.1%}",
                    flush=True,
                )
    versions_line = (versions_line + "\n" if versions_line else "") + lit_versions()
    table = markdown(rows)
    text = DIFFERENCES.format(num_train=num_train, min_lr_ratio=s["min_lr_ratio"], steps=s["steps"])
    report(args.out, busy + settings, versions_line, table, text)


if __name__ == "__main__":
    main()
