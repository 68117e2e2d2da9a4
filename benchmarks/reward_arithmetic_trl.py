"""Reward modelling side by side on the arithmetic task: TRL's ``RewardTrainer`` (``trl==1.16``) against lit_rlhf's
``RewardModule`` (``configs/arithmetic/reward.yaml``), both from the SFT export, on the same preference pairs.

Setup, once, from the repository root: TRL's virtualenv as for ``benchmarks/sft_arithmetic_trl.py``, beside the
repository (``../trl116-venv``, or ``--trl-python``):

    python3 -m venv ../trl116-venv
    ../trl116-venv/bin/pip install torch==2.13.0
    ../trl116-venv/bin/pip install torch==2.13.0 "trl==1.16.*" transformers==5.23.0 datasets accelerate

Run with the repository's ``.venv`` (needs ``runs/arithmetic/sft/hf``):

    .venv/bin/python benchmarks/reward_arithmetic_trl.py                       # the config's 1600 steps, 3 runs
    .venv/bin/python benchmarks/reward_arithmetic_trl.py --steps 20 --runs 1   # a quick check
    .venv/bin/python benchmarks/reward_arithmetic_trl.py --runs 3 --out docs/benchmarks.md

What runs (per run; runs alternate TRL, lit_rlhf as configured, lit_rlhf like-for-like):

1. This script builds the pairs with ``ArithmeticDataModule`` and the config's data settings (labelled pairs of the
   SFT export from the cache under ``runs/arithmetic/labelled_pairs``, copied to a temporary folder and used from
   there, so nothing under ``runs/`` is written; plus the config's synthetic mix), tokenized by lit_rlhf, and writes
   the training pairs and the held-out pairs (labelled held-out pairs + one synthetic and one near-miss pair per
   held-out problem: lit_rlhf's validation set) as JSON lines.
2. ``benchmarks/_trl_reward_worker.py`` runs in the TRL venv: ``RewardTrainer`` from the SFT export (new scalar
   head, initialised as lit_rlhf does), the config's batch size (pairs per step), steps, LR, weight decay, warmup,
   schedule and clipping, ``center_rewards_coefficient = --center-coef``; it checks that TRL's tokenization gives
   lit_rlhf's ids, then scores the held-out pairs. Timed: ``trainer.train()`` alone.
3. ``python train.py fit --config configs/arithmetic/reward.yaml`` as configured (Bradley-Terry + ``prefix_loss_coef``
   dense prefix-pair loss + ``center_coef`` centring), and, unless ``--no-like-for-like``, again with
   ``prefix_loss_coef 0`` and ``center_coef = --center-coef`` (the loss TRL computes). Validating once, after the
   last step, no sanity check. Timed: first training batch start to last training batch end (a callback). Held-out
   accuracy: its ``val/accuracy`` (and ``val/accuracy/<pair type>``).

pairs/s = steps x pairs per step / training seconds. Held-out accuracy = fraction of held-out pairs with
r_chosen > r_rejected, on the same pairs for every row. Medians over ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import (  # noqa: E402
    lit_versions,
    load_warning,
    machine_line,
    read_config,
    report,
    run_worker,
    timed_lit_run,
    use_threads,
)

WORKER = os.path.join(ROOT, "benchmarks", "_trl_reward_worker.py")
DEFAULT_TRL_PYTHON = os.path.join(os.path.dirname(ROOT), "trl116-venv", "bin", "python")
SETUP = (
    "python3 -m venv ../trl116-venv && ../trl116-venv/bin/pip install torch==2.13.0 && "
    '../trl116-venv/bin/pip install torch==2.13.0 "trl==1.16.*" transformers==5.23.0 datasets accelerate'
)
PAIR_TYPES = ("exact_vs_wrong", "synthetic", "near_miss")

DIFFERENCES = """\
What differs between the rows:

- lit_rlhf as configured adds a dense prefix-pair Bradley-Terry loss (`prefix_loss_coef {prefix}`: a score at every
  aligned prefix after the two responses part, for pairs whose chosen answer is verified right), which needs the
  per-token scores of the whole sequence, and centring (`center_coef {center}`). So its per-step work and its
  objective differ from TRL's; the like-for-like row (`prefix_loss_coef 0`, `center_coef {like_center}`) computes
  the loss TRL computes (`center_rewards_coefficient {like_center}`).
- Batch order: each library shuffles the {num_train} training pairs with its own sampler and RNG stream; the new
  score head is drawn from each one's RNG (same distribution: normal, std 1/sqrt(hidden+1), lit_rlhf's init).
- Warmup: lit_rlhf's step s of warmup uses (s+1)/(warmup+1) of the LR; Hugging Face's uses s/warmup (first step LR
  0). Both then follow the config's `{schedule}` schedule.
- Forward pass: TRL runs chosen and rejected as two full sequences in one batch, as lit_rlhf does by default;
  with `shared_prompt_forward: true` (`-- --model.init_args.shared_prompt_forward true`; off in the shipped
  arithmetic config) lit_rlhf runs each prompt once and both responses on its KV cache (the same scores and
  gradients, fewer token positions).
- Both: AdamW (no decay on biases and norms), clip at norm 1, fp32, score read at the EOS that ends each response.
"""


def write_pairs(data_dir: str, cache_dir: str, data_args: dict, policy: str) -> tuple[list[dict], int]:
    """Training and held-out pairs as lit_rlhf builds and tokenizes them, into ``train.jsonl`` and ``heldout.jsonl``."""
    from lit_rlhf.data.arithmetic import ArithmeticDataModule
    from lit_rlhf.models.loading import load_tokenizer

    kwargs = {k: v for k, v in data_args.items() if k not in ("batch_size", "eval_batch_size", "num_workers")}
    kwargs["pairs_cache_dir"] = cache_dir
    if kwargs.get("labeller_policy"):
        kwargs["labeller_policy"] = policy
    data = ArithmeticDataModule(**kwargs)
    data.connect(load_tokenizer(policy, pad_with_eos=False))
    data.prepare_data()
    data.setup("fit")
    heldout = []
    for split, examples in (("train", data.train_dataset), ("heldout", data.val_dataset)):
        with open(os.path.join(data_dir, f"{split}.jsonl"), "w") as f:
            for ex in examples:
                row = ex["row"]
                if ex.get("margin") is not None:
                    sys.exit("these pairs have margins; the benchmark does not pass margins to TRL")
                out = {
                    # TRL concatenates prompt + response and appends EOS: the space makes the word-level split agree.
                    "prompt": row["prompt"],
                    "chosen": " " + row["chosen"] if row["chosen"] else "",
                    "rejected": " " + row["rejected"] if row["rejected"] else "",
                    "prompt_ids": ex["prompt_ids"],
                    "chosen_ids": ex["chosen_ids"],
                    "rejected_ids": ex["rejected_ids"],
                    "pair_type": row.get("pair_type", ""),
                }
                f.write(json.dumps(out) + "\n")
                if split == "heldout":
                    heldout.append(out)
    return heldout, len(data.train_dataset)


def run_trl(args: argparse.Namespace, s: dict, tmp: str, heldout: list[dict], run: int) -> dict:
    out = os.path.join(tmp, f"trl_result_{run}.json")
    command = [args.trl_python, WORKER, "--data-dir", tmp, "--out", out, "--model", args.policy]
    for flag in ("steps", "batch_size", "learning_rate", "weight_decay", "warmup_steps", "lr_schedule"):
        command += [f"--{flag.replace('_', '-')}", str(s[flag])]
    command += ["--min-lr-ratio", str(s["min_lr_ratio"]), "--max-grad-norm", str(s["max_grad_norm"])]
    command += ["--center-coef", str(args.center_coef), "--max-length", str(s["max_length"])]
    command += ["--seed", str(s["seed"]), "--threads", str(args.threads)]
    result, wall = run_worker(command, out, os.path.join(tmp, f"trl_worker_{run}.log"))
    correct = [c > r for c, r in zip(result["r_chosen"], result["r_rejected"], strict=True)]
    by_type = {}
    for pair_type in PAIR_TYPES:
        hits = [ok for ok, row in zip(correct, heldout) if row["pair_type"] == pair_type]
        by_type[pair_type] = sum(hits) / len(hits) if hits else float("nan")
    losses = [entry["loss"] for entry in result["logs"] if "loss" in entry]
    return {
        "system": f"TRL {result['versions']['trl']} RewardTrainer (center {args.center_coef})",
        "steps": result["steps"],
        "train_s": result["train_s"],
        "pairs_per_s": result["pairs"] / result["train_s"],
        "accuracy": sum(correct) / len(correct),
        "by_type": by_type,
        "final_loss": losses[-1] if losses else float("nan"),
        "process_s": wall,
        "detail": result,
    }


def run_lit(args: argparse.Namespace, s: dict, tmp: str, cache_dir: str, run: int, like_for_like: bool) -> dict:
    tag = "like" if like_for_like else "config"
    save_dir = os.path.join(tmp, f"lit_{tag}_{run}")
    overrides = [
        "--model.init_args.model_name_or_path",
        args.policy,
        "--data.init_args.labeller_policy",
        args.policy,
        "--data.init_args.pairs_cache_dir",
        cache_dir,
        "--trainer.max_steps",
        str(s["steps"]),
        "--trainer.val_check_interval",
        str(s["steps"]),
        "--trainer.check_val_every_n_epoch",
        "null",
        "--trainer.num_sanity_val_steps",
        "0",
    ]
    if like_for_like:
        overrides += ["--model.init_args.prefix_loss_coef", "0", "--model.init_args.center_coef", str(args.center_coef)]
        system = f"lit_rlhf RewardModule, like-for-like (prefix 0, center {args.center_coef})"
    else:
        system = f"lit_rlhf RewardModule, as configured (prefix {s['prefix']}, center {s['center']})"
    lit_run = timed_lit_run(args.lit_config, save_dir, *overrides, *args.extra)
    wall, timer, scalars = lit_run["wall"], lit_run["timer"], lit_run["scalars"]
    last = {name: values[-1][1] for name, values in scalars.items() if values}
    return {
        "system": system,
        "steps": timer["batches"],
        "train_s": timer["train_s"],
        "pairs_per_s": timer["batches"] * s["batch_size"] / timer["train_s"],
        "accuracy": last.get("val/accuracy", float("nan")),
        "by_type": {t: last.get(f"val/accuracy/{t}", float("nan")) for t in PAIR_TYPES},
        "final_loss": last.get("train/loss", float("nan")),
        "process_s": wall,
    }


def markdown(rows_by_system: dict[str, list[dict]], heldout: list[dict]) -> str:
    counts = {t: sum(row["pair_type"] == t for row in heldout) for t in PAIR_TYPES}
    type_headers = " | ".join(f"{t} ({counts[t]})" for t in PAIR_TYPES)
    lines = [
        "| system | runs | steps | train s | pairs/s (median) | pairs/s (all runs) "
        f"| held-out accuracy ({len(heldout)} pairs, median) | accuracy (all runs) | {type_headers} "
        "| last logged BT loss | process wall s |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(PAIR_TYPES) + "---|---|",
    ]
    speeds = {}
    for system, rows in rows_by_system.items():
        speed = statistics.median(r["pairs_per_s"] for r in rows)
        speeds[system] = speed
        all_speeds = ", ".join(f"{r['pairs_per_s']:.0f}" for r in rows)
        all_acc = ", ".join(f"{r['accuracy']:.1%}" for r in rows)
        types = " | ".join(f"{statistics.median(r['by_type'][t] for r in rows):.1%}" for t in PAIR_TYPES)
        lines.append(
            f"| {system} | {len(rows)} | {rows[0]['steps']} | {statistics.median(r['train_s'] for r in rows):.1f} "
            f"| {speed:.0f} | {all_speeds} | {statistics.median(r['accuracy'] for r in rows):.1%} | {all_acc} "
            f"| {types} | {statistics.median(r['final_loss'] for r in rows):.4f} "
            f"| {statistics.median(r['process_s'] for r in rows):.0f} |"
        )
    trl = [name for name in speeds if name.startswith("TRL")]
    if trl:
        lines.append("")
        for name, speed in speeds.items():
            if name != trl[0]:
                lines.append(f"pairs/s ratio, {name} / TRL (medians): {speed / speeds[trl[0]]:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--trl-python",
        default=DEFAULT_TRL_PYTHON,
        help="python of the TRL venv (default: ../trl116-venv/bin/python beside the repository; see the setup)",
    )
    parser.add_argument("--lit-config", default="configs/arithmetic/reward.yaml", help="lit_rlhf reward config")
    parser.add_argument("--policy", default="runs/arithmetic/sft/hf", help="SFT export: start of both reward models")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's max_steps)")
    parser.add_argument("--runs", type=int, default=3, help="runs per row (medians are reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per process")
    parser.add_argument(
        "--center-coef",
        type=float,
        default=None,
        help="TRL's center_rewards_coefficient and the like-for-like lit_rlhf row's center_coef (default: config's)",
    )
    parser.add_argument("--skip-lit", action="store_true", help="run the TRL side only")
    parser.add_argument("--skip-trl", action="store_true", help="run the lit_rlhf side only")
    parser.add_argument("--no-like-for-like", action="store_true", help="skip the lit_rlhf prefix_loss_coef 0 row")
    parser.add_argument("--out", default=None, help="append the table and notes to this markdown file")
    parser.add_argument("extra", nargs="*", help="more CLI arguments for lit_rlhf's train.py, after --")
    args = parser.parse_args()

    use_threads(args.threads)
    if not os.path.isdir(args.policy):
        sys.exit(f"{args.policy} is missing: run the SFT stage first (see the README)")
    if not args.skip_trl and not os.path.isfile(args.trl_python):
        sys.exit(f"{args.trl_python} not found; set up TRL's venv from the repository root:\n  {SETUP}")

    config = read_config(args.lit_config)
    model_args, data_args = config["model"]["init_args"], config["data"]["init_args"]
    if args.center_coef is None:
        args.center_coef = model_args.get("center_coef", 0.0)
    s = {
        "steps": args.steps or config["trainer"]["max_steps"],
        "batch_size": data_args["batch_size"],
        "learning_rate": model_args["learning_rate"],
        "weight_decay": model_args.get("weight_decay", 0.0),
        "warmup_steps": model_args.get("warmup_steps", 0),
        "lr_schedule": model_args.get("lr_schedule", "cosine"),
        "min_lr_ratio": model_args.get("min_lr_ratio", 0.0),
        "max_grad_norm": config["trainer"].get("gradient_clip_val") or 0.0,
        "max_length": data_args["max_length"],
        "seed": config.get("seed_everything", 1234),
        "prefix": model_args.get("prefix_loss_coef", 0.0),
        "center": model_args.get("center_coef", 0.0),
    }
    if model_args.get("freeze_backbone"):
        sys.exit("freeze_backbone: true is not mirrored on the TRL side")

    busy = load_warning()
    print(machine_line())
    print(busy, end="")
    settings = (
        f"settings ({args.lit_config}): reward model from {args.policy} (new scalar head), {s['steps']} steps of "
        f"{s['batch_size']} pairs, AdamW lr {s['learning_rate']} weight decay {s['weight_decay']}, "
        f"{s['warmup_steps']} warmup steps then {s['lr_schedule']}, clip {s['max_grad_norm']}, max length "
        f"{s['max_length']}, fp32, {args.threads} thread(s); pairs: {data_args.get('pairs', 'synthetic')} "
        f"(synthetic_mix {data_args.get('synthetic_mix', 0.0)})"
    )
    print(settings, flush=True)
    rows: dict[str, list[dict]] = {}
    versions_line = ""
    with tempfile.TemporaryDirectory(prefix="reward_trl_bench_") as tmp:
        cache_dir = os.path.join(tmp, "labelled_pairs")
        source_cache = data_args.get("pairs_cache_dir", "runs/arithmetic/labelled_pairs")
        if os.path.isdir(source_cache):
            shutil.copytree(source_cache, cache_dir)  # read-only use of runs/: lit_rlhf's runs label into tmp
        heldout, num_train = write_pairs(tmp, cache_dir, data_args, args.policy)
        print(f"pairs: {num_train} training, {len(heldout)} held-out", flush=True)

        def record(row: dict, run: int) -> None:
            rows.setdefault(row["system"], []).append(row)
            print(
                f"run {run + 1}: {row['system']}: {row['train_s']:.1f}s, {row['pairs_per_s']:.0f} pairs/s, "
                f"held-out accuracy {row['accuracy']:.1%}",
                flush=True,
            )

        for run in range(args.runs):
            if not args.skip_trl:
                row = run_trl(args, s, tmp, heldout, run)
                record(row, run)
                v, st = row["detail"]["versions"], row["detail"]["settings"]
                versions_line = (
                    f"TRL venv: trl {v['trl']}, transformers {v['transformers']}, torch {v['torch']}, datasets "
                    f"{v['datasets']}, {v['threads']} thread(s); optimizer {st['optimizer']}, scheduler "
                    f"{st['lr_scheduler_type']}, center_rewards_coefficient {st['center_rewards_coefficient']}, "
                    f"head init {st['head_init']}; tokenization identical to lit_rlhf on "
                    f"{st['tokenization']['pairs_checked']} pairs"
                )
            if not args.skip_lit:
                record(run_lit(args, s, tmp, cache_dir, run, like_for_like=False), run)
                if not args.no_like_for_like:
                    record(run_lit(args, s, tmp, cache_dir, run, like_for_like=True), run)
    versions_line = (versions_line + "\n" if versions_line else "") + lit_versions()
    table = markdown(rows, heldout)
    text = DIFFERENCES.format(
        prefix=s["prefix"],
        center=s["center"],
        like_center=args.center_coef,
        num_train=num_train,
        schedule=s["lr_schedule"],
    )
    report(args.out, busy + settings, versions_line, table, text)


if __name__ == "__main__":
    main()
