"""DPO side by side on the arithmetic task: TRL's ``DPOTrainer`` (``trl==1.16``) against lit_rlhf's ``DPOModule``
(``configs/arithmetic/dpo.yaml``), both from the SFT export, on the same preference pairs.

Setup, once, from the repository root: TRL's virtualenv as for ``benchmarks/reward_arithmetic_trl.py``, beside the
repository (``../trl116-venv``, or ``--trl-python``). Run with the repository's ``.venv`` (needs
``runs/arithmetic/sft/hf``):

    .venv/bin/python benchmarks/dpo_arithmetic_trl.py --part loss                     # the loss cross-check
    .venv/bin/python benchmarks/dpo_arithmetic_trl.py --part speed --runs 2 --steps 200 --threads 2
    .venv/bin/python benchmarks/dpo_arithmetic_trl.py --part speed --precompute-ref-logps --runs 2 --steps 200

The pairs: this script builds them with ``ArithmeticDataModule`` and the config's data settings (labelled pairs of
the SFT export from the cache under ``runs/arithmetic/labelled_pairs``, copied to a temporary folder and used from
there, so nothing under ``runs/`` is written), tokenized by lit_rlhf, and writes them as JSON lines for
``benchmarks/_trl_dpo_worker.py`` (TRL's venv), which checks that TRL's tokenization gives lit_rlhf's ids.

``--part loss``: the policy is the SFT export after ``--perturb-steps`` TRL DPO steps at ``--perturb-lr`` (saved to a
temporary folder), the reference the SFT export itself, so the log-ratios are not zero. On the first ``--pairs``
training pairs, in batches of the config's batch size, both in eval mode: TRL's ``DPOTrainer.compute_loss`` and
lit_rlhf's ``lit_rlhf.functional.dpo.dpo_loss`` on ``DPOModule``'s summed response log-probabilities, for each
``--loss-types`` entry (``robust`` with ``--label-smoothing``); the largest absolute difference of the batch losses
and of the implicit rewards is reported.

``--part speed``: per run, TRL then lit_rlhf (never at the same time), the same SFT export, pairs, batch size,
``max_length``, steps, AdamW settings, schedule, clipping, fp32; ``precompute_ref_logps`` off, or on for both with
``--precompute-ref-logps``. pairs/s = (steps - ``--timing-warmup``) x pairs per step / the seconds from the end of
step ``--timing-warmup`` to the end of the last step (a callback on each side). Held-out exact-match of both trained
models by the same code (lit_rlhf's greedy generation over all held-out prompts as one batch, and its verifier).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import lightning.pytorch as pl  # noqa: E402

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

WORKER = os.path.join(ROOT, "benchmarks", "_trl_dpo_worker.py")
DEFAULT_TRL_PYTHON = os.path.join(os.path.dirname(ROOT), "trl116-venv", "bin", "python")


class StepTimes(pl.Callback):
    """Lightning callback (``--trainer.callbacks+=benchmarks.dpo_arithmetic_trl.StepTimes``): the
    ``time.perf_counter()`` at the start of the first training batch and at the end of every one, as JSON in
    ``path`` at the end of ``fit``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.start: float | None = None
        self.ends: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.ends.append(time.perf_counter())

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                json.dump({"start": self.start, "ends": self.ends}, f)


def steady_rate(ends: list[float], warmup: int, pairs_per_step: int) -> tuple[float, float]:
    """Pairs per second over the steps after the first ``warmup``, and those seconds."""
    if len(ends) <= warmup + 1:
        raise SystemExit(f"only {len(ends)} steps were timed: need more than --timing-warmup {warmup} + 1")
    seconds = ends[-1] - ends[warmup - 1] if warmup > 0 else ends[-1] - ends[0]
    steps = len(ends) - warmup if warmup > 0 else len(ends) - 1
    return steps * pairs_per_step / seconds, seconds


def write_pairs(data_dir: str, cache_dir: str, data_args: dict, policy: str) -> tuple[list[dict], list[dict]]:
    """Training pairs as lit_rlhf builds and tokenizes them (``train.jsonl``) and the held-out prompts
    (``heldout.jsonl``: prompt, prompt ids, answer); returns both lists (the training pairs with their examples)."""
    from lit_rlhf.data.arithmetic import ArithmeticDataModule
    from lit_rlhf.models.loading import load_tokenizer

    kwargs = {k: v for k, v in data_args.items() if k not in ("batch_size", "eval_batch_size", "num_workers")}
    kwargs["pairs_cache_dir"] = cache_dir
    if kwargs.get("labeller_policy"):
        kwargs["labeller_policy"] = policy
    tokenizer = load_tokenizer(policy, pad_with_eos=False)
    data = ArithmeticDataModule(**kwargs)
    data.connect(tokenizer)
    data.prepare_data()
    data.setup("fit")
    train = []
    with open(os.path.join(data_dir, "train.jsonl"), "w") as f:
        for ex in data.train_dataset:
            row = ex["row"]
            out = {
                # TRL concatenates prompt + response and appends EOS: the space makes the word-level split agree.
                "prompt": row["prompt"],
                "chosen": " " + row["chosen"] if row["chosen"] else "",
                "rejected": " " + row["rejected"] if row["rejected"] else "",
                "prompt_ids": ex["prompt_ids"],
                "chosen_ids": ex["chosen_ids"],
                "rejected_ids": ex["rejected_ids"],
            }
            f.write(json.dumps(out) + "\n")
            train.append(ex)
    prompts = ArithmeticDataModule(format="prompt", num_val=data_args["num_val"], seed=data_args.get("seed", 1234))
    prompts.connect(load_tokenizer(policy))
    prompts.setup("fit")
    heldout = []
    with open(os.path.join(data_dir, "heldout.jsonl"), "w") as f:
        for ex in prompts.val_dataset:
            row = {"prompt": ex["row"]["prompt"], "prompt_ids": ex["prompt_ids"], "answer": ex["row"]["answer"]}
            f.write(json.dumps(row) + "\n")
            heldout.append(row)
    return train, heldout


def one_scorer(policy: str, s: dict) -> float:
    """Held-out exact-match of the ``save_pretrained`` folder ``policy``, by the same code for both systems."""
    from benchmarks.common import greedy_arithmetic, held_out_arithmetic

    model, tokenizer, batch = held_out_arithmetic(policy, s["num_val"], s["data_seed"])
    _, right = greedy_arithmetic(model, tokenizer, batch, s["max_new_tokens"])
    return sum(right) / len(right)


def trl_command(args: argparse.Namespace, s: dict, tmp: str, out: str, mode: str) -> list[str]:
    command = [args.trl_python, WORKER, "--mode", mode, "--data-dir", tmp, "--out", out]
    command += ["--batch-size", str(s["batch_size"]), "--max-length", str(s["max_length"])]
    command += ["--beta", str(s["beta"]), "--label-smoothing", str(args.label_smoothing)]
    command += ["--learning-rate", str(s["learning_rate"]), "--weight-decay", str(s["weight_decay"])]
    command += ["--adam-betas", *(str(b) for b in s["betas"]), "--warmup-steps", str(s["warmup_steps"])]
    command += ["--lr-schedule", s["lr_schedule"], "--min-lr-ratio", str(s["min_lr_ratio"])]
    command += ["--max-grad-norm", str(s["max_grad_norm"]), "--max-new-tokens", str(s["max_new_tokens"])]
    command += ["--seed", str(s["seed"]), "--threads", str(args.threads)]
    return command


# --------------------------------------------------------------------------------------------------- loss check


def lit_losses(
    policy: str, reference: str, pairs: list[dict], s: dict, loss_type: str, label_smoothing: float, padding_free: bool
) -> tuple[list[float], list[dict]]:
    """lit_rlhf's batch losses and statistics on ``pairs`` (tokenized examples) in batches of the config's size:
    ``DPOModule``'s summed response log-probabilities (``pair_response_logps``) of the policy and the reference,
    then ``dpo_loss``."""
    import torch

    from lit_rlhf.data.collate import PairCollator
    from lit_rlhf.functional.dpo import dpo_loss
    from lit_rlhf.models.loading import load_causal_lm, load_tokenizer
    from lit_rlhf.modules.dpo import pair_response_logps

    tokenizer = load_tokenizer(policy, pad_with_eos=False)
    model, ref = (load_causal_lm(path, tokenizer).eval() for path in (policy, reference))
    collate = PairCollator(tokenizer.pad_token_id)
    losses, stats = [], []
    for start in range(0, len(pairs), s["batch_size"]):
        batch = collate(pairs[start : start + s["batch_size"]])
        n = len(batch["rows"])
        with torch.no_grad():
            logps, counts = pair_response_logps(model, batch, padding_free)
            ref_logps, _ = pair_response_logps(ref, batch, padding_free)
        loss, st = dpo_loss(
            logps[:n],
            logps[n:],
            ref_logps[:n],
            ref_logps[n:],
            beta=s["beta"],
            loss_type=loss_type,
            label_smoothing=label_smoothing if loss_type == "robust" else 0.0,
            chosen_lengths=counts[:n],
            rejected_lengths=counts[n:],
        )
        losses.append(float(loss))
        stats.append(
            {
                "rewards/chosen": float(st.chosen_reward),
                "rewards/rejected": float(st.rejected_reward),
                "rewards/margins": float(st.margin),
                "logps/chosen": float(st.chosen_logps),
                "logps/rejected": float(st.rejected_logps),
            }
        )
    return losses, stats


def part_loss(args: argparse.Namespace, s: dict, tmp: str, train: list[dict]) -> str:
    policy = os.path.join(tmp, "perturbed_policy")
    out = os.path.join(tmp, "trl_perturb.json")
    command = trl_command(args, {**s, "learning_rate": args.perturb_lr, "warmup_steps": 0}, tmp, out, "train")
    command += ["--model", args.policy, "--steps", str(args.perturb_steps), "--save-dir", policy]
    run_worker(command, out, os.path.join(tmp, "trl_perturb.log"))
    out = os.path.join(tmp, "trl_loss.json")
    command = trl_command(args, s, tmp, out, "loss")
    command += ["--model", policy, "--ref-model", args.policy, "--pairs", str(args.pairs)]
    command += ["--loss-types", *args.loss_types]
    result, _ = run_worker(command, out, os.path.join(tmp, "trl_loss.log"))
    lines = [
        "| loss type | batches | TRL mean loss | lit_rlhf mean loss | max abs diff of batch loss, padded "
        "| same, padding_free | max abs diff of rewards/chosen, rewards/rejected, logps/chosen (both paths) "
        "| mean margin (TRL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for loss_type in args.loss_types:
        trl = result["loss_check"][loss_type]
        diffs, stat_diff = [], 0.0
        for padding_free in (False, True):
            losses, stats = lit_losses(
                policy, args.policy, train[: args.pairs], s, loss_type, args.label_smoothing, padding_free
            )
            diffs.append(max(abs(a - b) for a, b in zip(trl["losses"], losses, strict=True)))
            stat_diff = max(
                stat_diff,
                *(
                    abs(t[name] - x[name])
                    for t, x in zip(trl["stats"], stats, strict=True)
                    for name in ("rewards/chosen", "rewards/rejected", "logps/chosen")
                ),
            )
        worst = max(worst, *diffs)
        margin = statistics.fmean(t["rewards/margins"] for t in trl["stats"])
        name = f"{loss_type} (label_smoothing {args.label_smoothing})" if loss_type == "robust" else loss_type
        lines.append(
            f"| {name} | {len(losses)} | {statistics.fmean(trl['losses']):.6f} | {statistics.fmean(losses):.6f} "
            f"| {diffs[0]:.1e} | {diffs[1]:.1e} | {stat_diff:.1e} | {margin:.4f} |"
        )
    lines += ["", f"largest batch-loss difference: {worst:.1e} ({'within' if worst <= 1e-5 else 'above'} 1e-5)"]
    setting = (
        f"loss cross-check: policy = {args.policy} after {args.perturb_steps} TRL DPO steps at lr {args.perturb_lr}, "
        f"reference = {args.policy}; the first {args.pairs} training pairs in batches of {s['batch_size']}, beta "
        f"{s['beta']}, both in eval mode, fp32; TRL tokenization identical to lit_rlhf on "
        f"{result['tokenization']['pairs_checked']} pairs (trl {result['versions']['trl']})"
    )
    return setting + "\n\n" + "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- speed


def run_trl(args: argparse.Namespace, s: dict, tmp: str, run: int) -> dict:
    out = os.path.join(tmp, f"trl_result_{run}.json")
    trained = os.path.join(tmp, f"trl_model_{run}")
    command = trl_command(args, s, tmp, out, "train")
    command += ["--model", args.policy, "--steps", str(s["steps"]), "--save-dir", trained]
    command += ["--loss-types", s["loss_type"]]
    if args.precompute_ref_logps:
        command.append("--precompute-ref-logps")
    result, wall = run_worker(command, out, os.path.join(tmp, f"trl_worker_{run}.log"))
    rate, seconds = steady_rate(result["step_ends"], args.timing_warmup, s["batch_size"])
    losses = [entry["loss"] for entry in result["logs"] if "loss" in entry]
    return {
        "system": f"TRL {result['versions']['trl']} DPOTrainer",
        "steps": result["steps"],
        "train_s": result["train_s"],
        "timed_s": seconds,
        "pairs_per_s": rate,
        "exact_match": one_scorer(trained, s),
        "final_loss": losses[-1] if losses else float("nan"),
        "process_s": wall,
        "detail": result,
    }


def run_lit(args: argparse.Namespace, s: dict, tmp: str, cache_dir: str, run: int) -> dict:
    save_dir = os.path.join(tmp, f"lit_{run}")
    os.makedirs(save_dir, exist_ok=True)
    times_path = os.path.join(save_dir, "step_times.json")
    overrides = [
        "--model.init_args.model_name_or_path",
        args.policy,
        "--model.init_args.precompute_ref_logps",
        "true" if args.precompute_ref_logps else "false",
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
        "--trainer.callbacks+=benchmarks.dpo_arithmetic_trl.StepTimes",
        f"--trainer.callbacks.init_args.path={times_path}",
    ]
    if s.get("labeller_policy"):
        overrides += ["--data.init_args.labeller_policy", args.policy]
    lit_run = timed_lit_run(args.lit_config, save_dir, *overrides, *args.extra)
    with open(times_path) as f:
        times = json.load(f)
    rate, seconds = steady_rate(times["ends"], args.timing_warmup, s["batch_size"])
    last = {name: values[-1][1] for name, values in lit_run["scalars"].items() if values}
    return {
        "system": "lit_rlhf DPOModule",
        "steps": lit_run["timer"]["batches"],
        "train_s": lit_run["timer"]["train_s"],
        "timed_s": seconds,
        "pairs_per_s": rate,
        "exact_match": one_scorer(os.path.join(lit_run["run_dir"], "hf"), s),
        "exact_match_own": last.get("val/exact_match", float("nan")),
        "final_loss": last.get("train/loss", float("nan")),
        "process_s": lit_run["wall"],
    }


def speed_table(rows: dict[str, list[dict]], s: dict, args: argparse.Namespace, start_em: float) -> str:
    lines = [
        f"| system | runs | steps | pairs/s after step {args.timing_warmup} (all runs) | median | train s (all runs) "
        f"| held-out exact-match after {s['steps']} steps (all runs), from {start_em:.1%} | last logged loss "
        "| process wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    speeds = {}
    for system, runs in rows.items():
        speeds[system] = statistics.median(r["pairs_per_s"] for r in runs)
        rates = ", ".join(f"{r['pairs_per_s']:.1f}" for r in runs)
        train_s = ", ".join(f"{r['train_s']:.1f}" for r in runs)
        ems = ", ".join(f"{r['exact_match']:.1%}" for r in runs)
        lines.append(
            f"| {system} | {len(runs)} | {runs[0]['steps']} | {rates} | {speeds[system]:.1f} | {train_s} | {ems} "
            f"| {statistics.median(r['final_loss'] for r in runs):.4f} "
            f"| {statistics.median(r['process_s'] for r in runs):.0f} |"
        )
    trl = [name for name in speeds if name.startswith("TRL")]
    lit = [name for name in speeds if name.startswith("lit_rlhf")]
    if trl and lit:
        lines.append("")
        ratios = [lr["pairs_per_s"] / tr["pairs_per_s"] for tr, lr in zip(rows[trl[0]], rows[lit[0]], strict=False)]
        lines.append(
            f"pairs/s ratio, lit_rlhf / TRL: {speeds[lit[0]] / speeds[trl[0]]:.2f}x (medians); per run: "
            + ", ".join(f"{r:.2f}x" for r in ratios)
        )
    return "\n".join(lines)


def part_speed(args: argparse.Namespace, s: dict, tmp: str, cache_dir: str) -> str:
    start_em = one_scorer(args.policy, s)
    print(f"SFT export held-out exact-match: {start_em:.1%}", flush=True)
    rows: dict[str, list[dict]] = {}
    versions = ""
    for run in range(args.runs):
        for side in ("trl", "lit"):
            if side == "trl" and args.skip_trl or side == "lit" and args.skip_lit:
                continue
            row = run_trl(args, s, tmp, run) if side == "trl" else run_lit(args, s, tmp, cache_dir, run)
            rows.setdefault(row["system"], []).append(row)
            print(
                f"run {run + 1}: {row['system']}: {row['pairs_per_s']:.1f} pairs/s after step {args.timing_warmup} "
                f"({row['train_s']:.1f}s training), held-out exact-match {row['exact_match']:.1%}",
                flush=True,
            )
            if side == "trl":
                v, st = row["detail"]["versions"], row["detail"]["settings"]
                versions = (
                    f"TRL venv: trl {v['trl']}, transformers {v['transformers']}, torch {v['torch']}, "
                    f"{v['threads']} thread(s); optimizer {st['optimizer']} ({st['optim']}), scheduler "
                    f"{st['lr_scheduler_type']}, loss {st['loss_type']}, precompute_ref_log_probs "
                    f"{st['precompute_ref_log_probs']}, bf16 {st['bf16']}, gradient_checkpointing "
                    f"{st['gradient_checkpointing']}; tokenization identical to lit_rlhf on "
                    f"{st['tokenization']['pairs_checked']} pairs"
                )
    return (versions + "\n" if versions else "") + lit_versions() + "\n\n" + speed_table(rows, s, args, start_em)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("loss", "speed"), required=True)
    parser.add_argument("--trl-python", default=DEFAULT_TRL_PYTHON, help="python of the TRL venv")
    parser.add_argument("--lit-config", default="configs/arithmetic/dpo.yaml", help="lit_rlhf DPO config")
    parser.add_argument("--policy", default="runs/arithmetic/sft/hf", help="SFT export: start of both policies")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's max_steps)")
    parser.add_argument("--runs", type=int, default=2, help="runs per system, alternating TRL and lit_rlhf")
    parser.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads per process")
    parser.add_argument("--timing-warmup", type=int, default=10, help="steps left out of pairs/s")
    parser.add_argument("--precompute-ref-logps", action="store_true", help="both systems precompute the reference")
    parser.add_argument("--pairs", type=int, default=128, help="--part loss: training pairs compared")
    parser.add_argument("--loss-types", nargs="+", default=["sigmoid", "ipo", "hinge", "robust"])
    parser.add_argument("--loss-beta", type=float, default=0.1, help="--part loss: beta")
    parser.add_argument("--label-smoothing", type=float, default=0.1, help="--part loss: for the robust loss")
    parser.add_argument("--perturb-steps", type=int, default=8, help="--part loss: TRL steps that make the policy")
    parser.add_argument("--perturb-lr", type=float, default=1e-4, help="--part loss: their learning rate")
    parser.add_argument("--skip-lit", action="store_true", help="run the TRL side only")
    parser.add_argument("--skip-trl", action="store_true", help="run the lit_rlhf side only")
    parser.add_argument("--out", default=None, help="append the table and notes to this markdown file")
    parser.add_argument("extra", nargs="*", help="more CLI arguments for lit_rlhf's train.py, after --")
    args = parser.parse_args()

    use_threads(args.threads)
    if not os.path.isdir(args.policy):
        sys.exit(f"{args.policy} is missing: run the SFT stage first (see the README)")
    if not os.path.isfile(args.trl_python):
        sys.exit(f"{args.trl_python} not found; set up TRL's venv (see benchmarks/reward_arithmetic_trl.py)")

    config = read_config(args.lit_config)
    model_args, data_args = config["model"]["init_args"], config["data"]["init_args"]
    s = {
        "steps": args.steps or config["trainer"]["max_steps"],
        "batch_size": data_args["batch_size"],
        "learning_rate": model_args["learning_rate"],
        "weight_decay": model_args.get("weight_decay", 0.0),
        "betas": model_args.get("betas", (0.9, 0.999)),
        "warmup_steps": model_args.get("warmup_steps", 0),
        "lr_schedule": model_args.get("lr_schedule", "constant"),
        "min_lr_ratio": model_args.get("min_lr_ratio", 0.0),
        "max_grad_norm": config["trainer"].get("gradient_clip_val") or 0.0,
        "max_length": data_args["max_length"],
        "seed": config.get("seed_everything", 1234),
        "beta": model_args.get("beta", 0.1),
        "loss_type": model_args.get("loss_type", "sigmoid"),
        "max_new_tokens": model_args.get("max_new_tokens", 20),
        "num_val": data_args["num_val"],
        "data_seed": data_args.get("seed", 1234),
        "labeller_policy": data_args.get("labeller_policy"),
    }
    busy = load_warning()
    print(machine_line())
    print(busy, end="")
    settings = (
        f"settings ({args.lit_config}): policy and reference from {args.policy}, {s['steps']} steps of "
        f"{s['batch_size']} pairs, {s['loss_type']} loss, beta {s['beta']}, AdamW lr {s['learning_rate']} betas "
        f"{tuple(s['betas'])} weight decay {s['weight_decay']}, {s['warmup_steps']} warmup steps then "
        f"{s['lr_schedule']}, clip {s['max_grad_norm']}, max length {s['max_length']}, fp32, {args.threads} "
        f"thread(s), precompute_ref_logps {args.precompute_ref_logps}; pairs: {data_args.get('pairs', 'synthetic')} "
        f"(synthetic_mix {data_args.get('synthetic_mix', 0.0)})"
    )
    print(settings, flush=True)
    with tempfile.TemporaryDirectory(prefix="dpo_trl_bench_") as tmp:
        cache_dir = os.path.join(tmp, "labelled_pairs")
        source_cache = data_args.get("pairs_cache_dir", "runs/arithmetic/labelled_pairs")
        if os.path.isdir(source_cache):
            shutil.copytree(source_cache, cache_dir)  # read-only use of runs/: lit_rlhf's runs label into tmp
        train, heldout = write_pairs(tmp, cache_dir, data_args, args.policy)
        print(f"pairs: {len(train)} training; {len(heldout)} held-out prompts", flush=True)
        if args.part == "loss":
            body = part_loss(args, {**s, "beta": args.loss_beta}, tmp, train)
        else:
            body = part_speed(args, s, tmp, cache_dir)
    report(args.out, busy + settings, body)


if __name__ == "__main__":
    main()
