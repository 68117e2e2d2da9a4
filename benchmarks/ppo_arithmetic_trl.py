"""PPO side by side on the arithmetic task: TRL's last PPOTrainer (``trl==0.29.1``, ``trl.experimental.ppo``) against
lit_rlhf's ``PPOModule``, with the same SFT policy, reward model, prompts and PPO settings.

Setup, once, from the repository root: TRL gets its own virtualenv beside the repository (``../trl-venv``), so it
never touches ``.venv``. Pin torch first, as for ``.venv`` (an unpinned torch pulls several GB of CUDA packages; on
a CPU machine without the local CPU wheel add ``--index-url https://download.pytorch.org/whl/cpu`` to the first
install, see the README):

    python3 -m venv ../trl-venv
    ../trl-venv/bin/pip install torch==2.13.0
    ../trl-venv/bin/pip install torch==2.13.0 trl==0.29.1 transformers==5.23.0 accelerate==1.15.0 datasets==5.2.0

Run with the repository's ``.venv`` (needs ``runs/arithmetic/sft/hf`` and ``runs/arithmetic/reward/hf``):

    .venv/bin/python benchmarks/ppo_arithmetic_trl.py                      # 3 runs of 1280 episodes each
    .venv/bin/python benchmarks/ppo_arithmetic_trl.py --total-episodes 256 --skip-lit   # the TRL side alone
    .venv/bin/python benchmarks/ppo_arithmetic_trl.py --total-episodes 19200 --critic-learning-rate 1e-4 \\
        --out docs/benchmarks.md -- --trainer.precision 32-true     # after --: more train.py arguments (lit side)

What runs:

1. This script (lit_rlhf's venv) builds the prompts with ``ArithmeticDataModule(format="prompt")``, tokenized by
   lit_rlhf (the training prompts and the held-out ones, split by ``--data-seed``), and writes them to JSON lines
   in a temporary folder.
2. ``benchmarks/_trl_ppo_worker.py`` runs in the TRL venv (``--trl-python``): it loads the SFT export as policy and
   reference, the reward-model export as reward model and as the value model's start, answers the held-out prompts
   greedily, trains with ``PPOTrainer``, and answers them again. Timed: ``trainer.train()`` alone.
3. Unless ``--skip-lit``: ``python train.py fit --config <--lit-config>`` with the same settings as CLI overrides,
   validating after ``--total-episodes`` (the same-episodes row), then, unless ``--no-same-time``, training on until
   its own training seconds equal TRL's for the same seed and validating again (lit_rlhf's gold after TRL's wall
   time). Timed: first training batch start to last training batch end less the validations in between
   (``benchmarks.common.TrainTimer``), so model loading, the sanity check, validation and the export are left
   out; the process wall time is reported too. Its held-out exact-match before training is ``lit_rlhf.evaluate``
   on the SFT export.
4. Steps 2-3 repeat ``--runs`` times with seeds ``--seed``, ``--seed + 1``, ...; the summary gives medians and the
   ratio of the median episodes/s.

Timings need a quiet machine: the script warns when the load average is above 0.5 at start. On a 2-core machine
shared with other training runs, 2 threads per process ran the same PPO iteration over 10x slower than 1 thread
(``--threads 1`` then gives the fairer side by side; it is passed to ``train.py`` as ``OMP_NUM_THREADS``).

Held-out exact-match is greedy, ``max_new_tokens = --response-length``, scored with lit_rlhf's
``arithmetic_task.exact_match`` for both systems. episodes/s = episodes / training seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import (  # noqa: E402
    exact_match_rate,
    load_warning,
    machine_line,
    report,
    run_worker,
    same_time_table,
    timed_lit_run,
    use_threads,
    write_arithmetic_prompts,
)

WORKER = os.path.join(ROOT, "benchmarks", "_trl_ppo_worker.py")
DEFAULT_TRL_PYTHON = os.path.join(os.path.dirname(ROOT), "trl-venv", "bin", "python")
SETUP = (
    "python3 -m venv ../trl-venv && ../trl-venv/bin/pip install torch==2.13.0 && ../trl-venv/bin/pip install "
    "torch==2.13.0 trl==0.29.1 transformers==5.23.0 accelerate==1.15.0 datasets==5.2.0"
)

DIFFERENCES = """\
What differs between the two rows, by design of each library (not tuned away here):

- Reward scale: lit_rlhf's `RewardModelReward` normalises reward-model scores with the export's
  `reward_normalization` (mean {rm_mean:.3f}, std {rm_std:.3f}); TRL uses the raw score. So in TRL the KL penalty
  (`kl_coef`) and `missing_eos_penalty` weigh {rm_std:.2f}x less against the score than in lit_rlhf, and the two
  "final score" columns are on different scales (TRL raw, lit_rlhf normalised, both after the EOS penalty).
- Where the score lands: TRL adds it one position after the EOS token (`sequence_lengths + 1`, the "p1"
  convention; the value there is trained too), so GAE passes it to the EOS token through one more value state
  and a factor `lam`; lit_rlhf adds it on the last real response token.
- Optimizers: TRL has one AdamW over policy and value model with one learning rate and loss
  `pg_loss + vf_coef * vf_loss` (vf_coef 0.1, nearly irrelevant under Adam); lit_rlhf has one AdamW per model
  (critic learning rate: {lit_critic_lr}). `--critic-learning-rate` gives TRL's value parameters their own rate
  through a custom optimizer passed to `PPOTrainer(optimizers=...)`.
- Gradient clipping: TRL's PPO loop never clips (`max_grad_norm` is unused); lit_rlhf clips each optimizer step at
  norm {lit_grad_norm}.
- Randomness: prompt order and sampling use each library's own RNG streams, so single runs differ by noise.
"""


def run_trl(args: argparse.Namespace, tmp: str, heldout: list[dict], seed: int) -> dict:
    """Run the worker in the TRL venv; its result, scored."""
    out = os.path.join(tmp, f"trl_result_{seed}.json")
    command = [
        args.trl_python,
        WORKER,
        "--data-dir",
        tmp,
        "--out",
        out,
        "--policy",
        args.policy,
        "--reward-model",
        args.reward_model,
        "--value-model",
        args.value_model or args.reward_model,
        "--total-episodes",
        str(args.total_episodes),
        "--batch-size",
        str(args.batch_size),
        "--num-mini-batches",
        str(args.num_mini_batches),
        "--ppo-epochs",
        str(args.ppo_epochs),
        "--response-length",
        str(args.response_length),
        "--temperature",
        str(args.temperature),
        "--kl-coef",
        str(args.kl_coef),
        "--stop-token",
        args.stop_token,
        "--learning-rate",
        str(args.learning_rate),
        "--vf-coef",
        str(args.vf_coef),
        "--gamma",
        str(args.gamma),
        "--lam",
        str(args.lam),
        "--seed",
        str(seed),
        "--threads",
        str(args.threads),
    ]
    if args.missing_eos_penalty is not None:
        command += ["--missing-eos-penalty", str(args.missing_eos_penalty)]
    if args.critic_learning_rate is not None:
        command += ["--critic-learning-rate", str(args.critic_learning_rate)]
    result, wall = run_worker(command, out, os.path.join(tmp, f"trl_worker_{seed}.log"))
    logs = [entry for entry in result["logs"] if "objective/kl" in entry]
    return {
        "system": f"TRL {result['versions']['trl']} PPOTrainer, seed {seed}",
        "episodes": result["episodes"],
        "iterations": len(logs),
        "train_s": result["train_s"],
        "process_s": wall,
        "before": exact_match_rate(result["before"], heldout),
        "after": exact_match_rate(result["after"], heldout),
        "eos_after": sum(result["after_eos"]) / len(heldout),
        "kl": logs[-1]["objective/kl"] if logs else float("nan"),
        "score": logs[-1]["objective/scores"] if logs else float("nan"),
        "detail": result,
    }


def run_lit(args: argparse.Namespace, tmp: str, seed: int, before: float, budget_s: float | None) -> dict:
    """``train.py fit`` on ``--lit-config`` with this benchmark's settings; times and final metrics.

    Validates after ``--total-episodes`` (the same-episodes row). With ``budget_s`` (TRL's training seconds of the
    same seed) it trains on until its own training seconds reach the budget and validates again there (the
    same-wall-time figure); training seconds leave validation out."""
    iterations = math.ceil(args.total_episodes / args.batch_size)
    max_steps = iterations * (4 if budget_s is not None else 1)  # one training step per PPO iteration
    overrides = [
        "--seed_everything",
        str(seed),
        "--model.init_args.policy_name_or_path",
        args.policy,
        "--model.init_args.critic_name_or_path",
        args.value_model or args.reward_model,
        "--model.init_args.actor_learning_rate",
        str(args.learning_rate),
        "--model.init_args.max_new_tokens",
        str(args.response_length),
        "--model.init_args.temperature",
        str(args.temperature),
        "--model.init_args.gamma",
        str(args.gamma),
        "--model.init_args.lam",
        str(args.lam),
        "--model.init_args.kl_coef",
        str(args.kl_coef),
        "--model.init_args.kl_estimator",
        "k1",
        "--model.init_args.missing_eos_penalty",
        "null" if args.missing_eos_penalty is None else str(args.missing_eos_penalty),
        "--model.init_args.ppo_epochs",
        str(args.ppo_epochs),
        "--model.init_args.num_minibatches",
        str(args.num_mini_batches),
        "--data.init_args.batch_size",
        str(args.batch_size),
        "--data.init_args.num_val",
        str(args.num_val),
        "--data.init_args.seed",
        str(args.data_seed),
        "--trainer.max_steps",
        str(max_steps),
        "--trainer.val_check_interval",
        str(iterations),
        "--trainer.check_val_every_n_epoch",
        "null",
    ]
    if args.critic_learning_rate is not None:
        overrides += ["--model.init_args.critic_learning_rate", str(args.critic_learning_rate)]
    save_dir = os.path.join(tmp, f"lit_{seed}")
    lit_run = timed_lit_run(
        args.lit_config, save_dir, *overrides, *args.extra, budget_s=budget_s, min_batches=iterations
    )
    wall, timer, scalars, resolved = lit_run["wall"], lit_run["timer"], lit_run["scalars"], lit_run["config"]
    matched = next(v for v in timer["validations"] if v["batches"] == iterations)
    final = timer["validations"][-1]
    last_step = iterations - 1  # training curves are logged at step iteration - 1 (the first iteration at step 0)

    def at_match(tag: str) -> float:
        values = [value for step, value in scalars.get(tag, []) if step <= last_step]
        return values[-1] if values else float("nan")

    return {
        "system": f"lit_rlhf PPOModule, seed {seed}",
        "episodes": iterations * args.batch_size,
        "iterations": iterations,
        "train_s": matched["train_s"],
        "process_s": wall,
        "before": before,
        "after": matched["metrics"].get("val/exact_match", float("nan")),
        "eos_after": matched["metrics"].get("val/eos_rate", float("nan")),
        "kl": at_match("objective/kl"),
        "score": at_match("objective/score"),
        "same_time": None
        if budget_s is None or matched["train_s"] > budget_s  # slower than TRL: no same-time point past the match
        else {
            "budget_s": budget_s,
            "train_s": final["train_s"],
            "episodes": final["batches"] * args.batch_size,
            "after": final["metrics"].get("val/exact_match", float("nan")),
        },
        "config": resolved,
    }


def markdown(rows: list[dict]) -> str:
    lines = [
        "| system | episodes | train s | episodes/s | s / iteration | held-out exact-match before → after "
        "| EOS rate after | final KL | final score | process wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['episodes']} | {r['train_s']:.1f} | {r['episodes'] / r['train_s']:.1f} "
            f"| {r['train_s'] / max(r['iterations'], 1):.2f} | {r['before']:.1%} → {r['after']:.1%} "
            f"| {r['eos_after']:.1%} | {r['kl']:.3f} | {r['score']:+.3f} | {r['process_s']:.1f} s |"
        )
    trl = [r for r in rows if r["system"].startswith("TRL")]
    lit = [r for r in rows if r["system"].startswith("lit_rlhf")]
    timed = [r["same_time"] for r in lit if r.get("same_time")]
    lines += same_time_table(lit, "episodes")
    lines.append("")
    for name, group in (("TRL", trl), ("lit_rlhf", lit)):
        if group:
            speed = statistics.median(r["episodes"] / r["train_s"] for r in group)
            gain = statistics.median(r["after"] - r["before"] for r in group)
            lines.append(
                f"- {name}: median {speed:.1f} episodes/s, median exact-match change after the same episodes "
                f"{gain * 100:+.1f} points ({len(group)} runs)"
            )
    if timed:
        gain = statistics.median(r["same_time"]["after"] - r["before"] for r in lit if r.get("same_time"))
        lines.append(
            f"- lit_rlhf after TRL's wall time: median exact-match change {gain * 100:+.1f} points ({len(timed)} of "
            f"{len(lit)} runs; a run slower than TRL's has no same-time point after the same episodes)"
        )
    if trl and lit:
        ratio = statistics.median(r["episodes"] / r["train_s"] for r in lit) / statistics.median(
            r["episodes"] / r["train_s"] for r in trl
        )
        lines.append(f"- episodes/s ratio, lit_rlhf / TRL (medians): {ratio:.2f}x")
    return "\n".join(lines)


def notes(args: argparse.Namespace, rows: list[dict]) -> str:
    with open(os.path.join(ROOT, args.reward_model, "config.json")) as f:
        stats = json.load(f).get("reward_normalization") or {"mean": 0.0, "std": 1.0}
    lit = next((r for r in rows if "config" in r), None)
    model = (lit or {}).get("config", {}).get("model", {}).get("init_args", {})
    text = DIFFERENCES.format(
        rm_mean=stats["mean"],
        rm_std=stats["std"],
        lit_critic_lr=model.get("critic_learning_rate", "as in --lit-config"),
        lit_grad_norm=model.get("max_grad_norm", "1.0 (default)"),
    )
    if lit is not None:
        reward = model.get("reward", {})
        source = reward.get("class_path", "?")
        path = reward.get("init_args", {}).get("model_name_or_path")
        normalize = reward.get("init_args", {}).get("normalize", True)
        text += f"- lit_rlhf's reward source (from {args.lit_config}): {source}"
        text += f" on {path} (normalize: {normalize})\n" if path else "\n"
        if not source.endswith("RewardModelReward") or (path and os.path.normpath(path) != args.reward_model):
            text += f"  WARNING: not the reward model TRL used ({args.reward_model}): the rows are not comparable.\n"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--trl-python",
        default=DEFAULT_TRL_PYTHON,
        help="python of the TRL venv (default: ../trl-venv/bin/python beside the repository; see the setup)",
    )
    parser.add_argument("--lit-config", default="configs/arithmetic/ppo.yaml", help="lit_rlhf PPO config")
    parser.add_argument("--skip-lit", action="store_true", help="run the TRL side only")
    parser.add_argument("--skip-trl", action="store_true", help="run the lit_rlhf side only")
    parser.add_argument("--policy", default="runs/arithmetic/sft/hf", help="SFT export: policy and reference")
    parser.add_argument("--reward-model", default="runs/arithmetic/reward/hf", help="reward-model export")
    parser.add_argument("--value-model", default=None, help="where the critic starts (default: the reward model)")
    parser.add_argument("--total-episodes", type=int, default=1280, help="prompts sampled in all (rounded up)")
    parser.add_argument("--batch-size", type=int, default=128, help="prompts per rollout (PPO iteration)")
    parser.add_argument("--num-mini-batches", type=int, default=2)
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--response-length", type=int, default=20, help="max new tokens (rollouts and evaluation)")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--kl-coef", type=float, default=0.05)
    parser.add_argument("--missing-eos-penalty", type=float, default=1.0, help="negative: none")
    parser.add_argument("--stop-token", choices=("eos", "none"), default="eos", help="TRL's stop_token")
    parser.add_argument("--learning-rate", type=float, default=3e-5, help="actor (and TRL's only) learning rate")
    parser.add_argument(
        "--critic-learning-rate", type=float, default=None, help="value-model rate for both (default: each's own)"
    )
    parser.add_argument("--vf-coef", type=float, default=0.1, help="TRL's value-loss weight")
    parser.add_argument("--gamma", type=float, default=1.0, help="GAE discount (both)")
    parser.add_argument("--lam", type=float, default=1.0, help="GAE lambda (both)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--data-seed", type=int, default=1234, help="ArithmeticDataModule seed (train/held-out split)")
    parser.add_argument("--num-val", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="runs per system, seeds --seed, --seed + 1, ...")
    parser.add_argument(
        "--no-same-time", action="store_true", help="stop lit_rlhf at --total-episodes (no same-wall-time figure)"
    )
    parser.add_argument("--out", default=None, help="append the table and notes to this markdown file")
    parser.add_argument("extra", nargs="*", help="more CLI arguments for lit_rlhf's train.py, after --")
    args = parser.parse_args()
    if args.missing_eos_penalty is not None and args.missing_eos_penalty < 0:
        args.missing_eos_penalty = None
    if args.total_episodes < 1 or args.batch_size % args.num_mini_batches:
        sys.exit("need --total-episodes >= 1 and --batch-size divisible by --num-mini-batches")

    use_threads(args.threads)
    for path in (args.policy, args.reward_model):
        if not os.path.isdir(path):
            sys.exit(f"{path} is missing: run the SFT and reward stages first (see the README)")
    if not args.skip_trl and not os.path.isfile(args.trl_python):
        sys.exit(f"{args.trl_python} not found; set up TRL's venv from the repository root:\n  {SETUP}")
    if not args.skip_lit and not os.path.isfile(args.lit_config):
        sys.exit(f"{args.lit_config} not found (pass --lit-config, or --skip-lit for the TRL side alone)")

    busy = load_warning(
        "on a busy 2-core machine, 2 threads per process made the same PPO iteration over 10x slower than 1 "
        "thread (oversubscribed OpenMP threads), in both venvs: timings are not those of a quiet machine "
        "(--threads 1 suffers least); accuracies are unaffected"
    )
    print(machine_line())
    print(busy, end="")
    settings = (
        f"settings: {args.total_episodes} episodes, {args.batch_size} prompts per rollout, {args.num_mini_batches} "
        f"minibatches x {args.ppo_epochs} epochs, response length {args.response_length}, temperature "
        f"{args.temperature}, kl_coef {args.kl_coef} (k1), missing_eos_penalty {args.missing_eos_penalty}, "
        f"lr {args.learning_rate}, seed {args.seed}; policy {args.policy}, reward {args.reward_model}, value from "
        f"{args.value_model or args.reward_model}"
    )
    print(settings, flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ppo_trl_bench_") as tmp:
        heldout = write_arithmetic_prompts(tmp, args.policy, args.num_val, args.data_seed)
        before = None
        if not args.skip_lit:
            from lit_rlhf.evaluate import evaluate_arithmetic

            before = evaluate_arithmetic(
                args.policy, num_val=args.num_val, data_seed=args.data_seed, max_new_tokens=args.response_length
            )["exact_match"]
        for run in range(args.runs):
            seed = args.seed + run
            budget = None
            if not args.skip_trl:
                rows.append(run_trl(args, tmp, heldout, seed))
                versions = rows[-1]["detail"]["versions"]
                print(
                    f"TRL venv: trl {versions['trl']}, transformers {versions['transformers']}, torch "
                    f"{versions['torch']}, {versions['threads']} threads; optimizer "
                    f"{rows[-1]['detail']['settings']['optimizer']}",
                    flush=True,
                )
                budget = None if args.no_same_time else rows[-1]["train_s"]
            if not args.skip_lit:
                rows.append(run_lit(args, tmp, seed, before, budget))
            print(markdown(rows), flush=True)
    table = markdown(rows)
    text = notes(args, rows)
    report(args.out, busy + settings, table, text)


if __name__ == "__main__":
    main()
