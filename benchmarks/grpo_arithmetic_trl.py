"""GRPO side by side on the arithmetic task: TRL's ``GRPOTrainer`` (``trl==1.16``) against lit_rlhf's ``GRPOModule``
(``configs/arithmetic/grpo.yaml``), from the same SFT export, on the same prompts, with the same reward (the
verifier's exact match) and the same GRPO settings.

Setup, once, from the repository root: TRL gets its own virtualenv beside the repository (``../trl116-venv``, or
``--trl-python``), so it never touches ``.venv``. Pin torch first (an unpinned torch pulls several GB of CUDA
packages; on a CPU machine without the local CPU wheel add ``--index-url https://download.pytorch.org/whl/cpu`` to the
first install, see the README):

    python3 -m venv ../trl116-venv
    ../trl116-venv/bin/pip install torch==2.13.0
    ../trl116-venv/bin/pip install torch==2.13.0 "trl==1.16.*" transformers==5.23.0 datasets accelerate

Run with the repository's ``.venv`` (needs ``runs/arithmetic/sft/hf``):

    .venv/bin/python benchmarks/grpo_arithmetic_trl.py                     # 3 runs of 6400 completions each
    .venv/bin/python benchmarks/grpo_arithmetic_trl.py --total-completions 256 --runs 1   # a quick check
    .venv/bin/python benchmarks/grpo_arithmetic_trl.py --total-completions 6400 --skip-lit  # the TRL side alone
    .venv/bin/python benchmarks/grpo_arithmetic_trl.py --out docs/benchmarks.md -- --trainer.precision 32-true
                                                         # after --: more train.py arguments (lit side)

Settings: ``--lit-config``'s by default (``configs/arithmetic/grpo.yaml``: 16 prompts x 8 generations = 128
completions per generation batch, 20 new tokens, temperature 1.0, AdamW 3e-5 constant, beta 0, clip 0.2, one pass
of 2 optimizer steps per batch, token-mean loss, advantages divided by the group's std; fp32); each can be changed
with its option, and the values used are passed to both systems explicitly. The default 6400 completions (50
generation batches) is about the issue's reference point, TRL 1.16 on the same model: 46 s at 140 completions/s.

What runs:

1. This script (lit_rlhf's venv) builds the prompts with ``ArithmeticDataModule(format="prompt")``, tokenized by
   lit_rlhf (the training prompts and the held-out ones, split by ``--data-seed``), and writes them to JSON lines
   in a temporary folder, with each prompt's reference answer.
2. ``benchmarks/_trl_grpo_worker.py`` runs in the TRL venv (``--trl-python``): it checks that TRL's tokenizer gives
   lit_rlhf's ids for every prompt text (TRL tokenizes the text itself), loads the SFT export, answers the held-out
   prompts greedily, trains with ``GRPOTrainer`` (reward: the verifier's exact-match rule, copied into the worker;
   mapping of the settings in the worker's docstring: ``steps_per_generation`` = lit_rlhf's ``num_minibatches``,
   ``per_device_train_batch_size`` = completions per optimizer step, ``loss_type="bnpo"`` = lit_rlhf's token-mean
   loss) and answers them again. Timed: ``trainer.train()`` alone.
3. Unless ``--skip-lit``: ``python train.py fit --config <--lit-config>`` with the same settings as CLI overrides,
   validating after the same number of generation batches (the same-completions row), then, unless
   ``--no-same-time``, training on until its own training seconds equal TRL's for the same seed and validating
   again (lit_rlhf's exact-match after TRL's training time). Timed: first training batch start to last training
   batch end less the validations in between (``benchmarks.common.TrainTimer``), so model loading, validation and
   the export are left out; the process wall time is reported too. Its held-out exact-match before training is
   ``lit_rlhf.evaluate`` on the SFT export.
4. Steps 2-3 repeat ``--runs`` times with seeds ``--seed``, ``--seed + 1``, ...; the summary gives medians and the
   ratio of the median completions/s.

completions/s = completions sampled / training seconds. Held-out exact-match is greedy, ``max_new_tokens =
--max-new-tokens``, scored with lit_rlhf's ``arithmetic_task.exact_match`` for both systems; the first 512 training
rewards TRL computed are re-scored with it too (a warning if any differ). Timings need a quiet machine: the script
warns when the load average is above 0.5 at start.
"""

from __future__ import annotations

import argparse
import math
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
    same_time_table,
    timed_lit_run,
    use_threads,
    write_arithmetic_prompts,
)

WORKER = os.path.join(ROOT, "benchmarks", "_trl_grpo_worker.py")
DEFAULT_TRL_PYTHON = os.path.join(os.path.dirname(ROOT), "trl116-venv", "bin", "python")
SETUP = (
    "python3 -m venv ../trl116-venv && ../trl116-venv/bin/pip install torch==2.13.0 && "
    '../trl116-venv/bin/pip install torch==2.13.0 "trl==1.16.*" transformers==5.23.0 datasets accelerate'
)
REFERENCE = (
    "The issue's reference point: TRL 1.16 GRPOTrainer on the same model and settings rose 64% → 80% held-out "
    "exact-match in 46 s (140 completions/s), on the issue's machine and SFT model."
)
LOSS_AVERAGING = {"bnpo": "token", "dapo": "token", "grpo": "sequence"}

DIFFERENCES = """\
What differs between the two rows, by design of each library (not tuned away here):

- Old log-probabilities: {recompute}; lit_rlhf always keeps those of its sampling pass (KV-cache generation), so
  its first ratio is 1 up to float rounding and it never runs that pass.
- Loss normalisation: TRL `loss_type="{loss_type}"`{loss_note}
- Minibatches: TRL shuffles the generation batch's completions across prompts before splitting it into optimizer
  steps and runs every completion as a full prompt + completion row; {minibatches}
- Advantages: both (reward - group mean) / (unbiased group std + 1e-4){scale_note}. The logged `reward_std` differs in
  meaning (TRL: std over the whole generation batch; lit_rlhf: mean of the groups' std), so it is not compared.
- Prompt order: TRL's `RepeatSampler` shuffles with `torch.randperm` seeded by the run's seed; lit_rlhf's sampler
  with the same `torch.randperm` seeded by the data seed ({data_seed}, which also fixes the held-out split), so its
  order is the same in every run. Sampling: both draw from torch's global RNG, seeded with the run's seed. So in the
  run whose seed equals the data seed both systems start on the same prompts with the same random stream and may
  sample the same completions until float differences in the updates part them; {lockstep}
- Timing: TRL's `trainer.train()` includes its set-up before the first optimizer step (median {trl_setup:.2f} s
  here: dataloader, accelerate, callbacks) and after the last; lit_rlhf's TrainTimer starts at its first training
  batch. lit_rlhf keeps `{lit_config}`'s ModelCheckpoint callback (a checkpoint every
  {ckpt} optimizer steps, inside the timed loop when reached); TRL saves nothing.
- Held-out evaluation: TRL's model is answered greedily by the worker (Hugging Face `generate`, cut at EOS, before
  and after `train()`); lit_rlhf's by its own validation (`val/exact_match`, same greedy rule) and, before
  training, by `lit_rlhf.evaluate`. Both are scored by lit_rlhf's verifier.
- Both: AdamW (betas 0.9/0.999, weight decay {weight_decay}), constant LR {lr}, gradient clipping at norm
  {max_grad_norm}, KL coefficient beta {beta} (0: no reference model loaded), fp32, no gradient checkpointing,
  {threads} thread(s).
"""


def resolve_settings(args: argparse.Namespace) -> list[str]:
    """Fill the GRPO settings left unset on the command line from ``--lit-config``; return warnings about settings of
    the config that the TRL side does not reproduce (they are overridden for lit_rlhf where possible)."""
    config = read_config(args.lit_config)
    model = config["model"]["init_args"]
    data = config["data"]["init_args"]
    defaults = {
        "batch_size": data.get("batch_size", 64),
        "num_generations": model.get("num_generations", 8),
        "num_minibatches": model.get("num_minibatches", 1),
        "num_iterations": model.get("num_iterations", 1),
        "max_new_tokens": model.get("max_new_tokens", 32),
        "temperature": model.get("temperature", 1.0),
        "learning_rate": model.get("learning_rate", 1e-6),
        "weight_decay": model.get("weight_decay", 0.0),
        "max_grad_norm": model.get("max_grad_norm", 1.0),
        "beta": model.get("beta", 0.0),
        "clip_range": model.get("clip_range", 0.2),
        "loss_type": "grpo" if model.get("loss_averaging", "token") == "sequence" else "bnpo",
        "scale_rewards": "group" if model.get("scale_rewards", True) else "none",
        "num_val": data.get("num_val", 512),
        "data_seed": data.get("seed", 1234),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.checkpoint_every = next(
        (
            c.get("init_args", {}).get("every_n_train_steps")
            for c in config.get("trainer", {}).get("callbacks") or []
            if isinstance(c, dict) and c.get("class_path", "").endswith("ModelCheckpoint")
        ),
        None,
    )
    warnings = []
    rewards = model.get("rewards") or []
    verifier = [r for r in rewards if str(r.get("class_path", "")).endswith("ArithmeticVerifierReward")]
    init = verifier[0].get("init_args", {}) if verifier else {}
    if (
        len(rewards) != 1
        or not verifier
        or init.get("metric", "exact_match") != "exact_match"
        or init.get("correct", 1.0) != 1.0
        or init.get("wrong", 0.0) != 0.0
        or model.get("reward_weights") not in (None, [1], [1.0])
    ):
        warnings.append(
            f"WARNING: {args.lit_config}'s rewards are not one ArithmeticVerifierReward(metric=exact_match, 1/0) of "
            "weight 1, the rule TRL's worker uses: the rows are not comparable."
        )
    if (model.get("gradient_accumulation_steps") or 1) != 1:
        warnings.append("note: lit_rlhf's gradient_accumulation_steps is set to 1 here (TRL's side has none).")
    for name, expected in (
        ("missing_eos_penalty", None),
        ("clip_range_high", None),
        ("top_k", 0),
        ("top_p", 1.0),
        ("lr_schedule", "constant"),
        ("warmup_steps", 0),
    ):
        if model.get(name, expected) != expected:
            warnings.append(f"note: {args.lit_config} sets {name}={model[name]!r}; both sides run with {expected!r}.")
    return warnings


def first_last(values: list[float], k: int = 5) -> tuple[float, float]:
    """Means of the first and of the last ``k`` values (nan, nan when empty)."""
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values[:k]), statistics.fmean(values[-k:])


def run_trl(args: argparse.Namespace, tmp: str, heldout: list[dict], iterations: int, seed: int) -> dict:
    """Run the worker in the TRL venv; its result, scored with lit_rlhf's verifier."""
    from lit_rlhf.data.arithmetic_task import exact_match

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
        "--iterations",
        str(iterations),
        "--prompts-per-batch",
        str(args.batch_size),
        "--num-generations",
        str(args.num_generations),
        "--num-minibatches",
        str(args.num_minibatches),
        "--num-iterations",
        str(args.num_iterations),
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--temperature",
        str(args.temperature),
        "--learning-rate",
        str(args.learning_rate),
        "--weight-decay",
        str(args.weight_decay),
        "--max-grad-norm",
        str(args.max_grad_norm),
        "--beta",
        str(args.beta),
        "--epsilon",
        str(args.clip_range),
        "--loss-type",
        args.loss_type,
        "--scale-rewards",
        args.scale_rewards,
        "--seed",
        str(seed),
        "--threads",
        str(args.threads),
    ]
    result, wall = run_worker(command, out, os.path.join(tmp, f"trl_worker_{seed}.log"))
    logs = [entry for entry in result["logs"] if "reward" in entry]
    reward_first, reward_last = first_last([e["reward"] for e in logs])
    disagreements = sum(exact_match(c, a) != r for c, a, r in result["reward_samples"])
    before = exact_match_rate(result["before"], heldout)
    after = exact_match_rate(result["after"], heldout)
    own = result["own_exact_match"]
    return {
        "system": f"TRL {result['versions']['trl']} GRPOTrainer, seed {seed}",
        "completions": result["completions"],
        "iterations": len(logs),
        "train_s": result["train_s"],
        "process_s": wall,
        "before": before,
        "after": after,
        "eos_after": sum(result["after_eos"]) / len(heldout),
        "reward_first": reward_first,
        "reward_last": reward_last,
        "length_last": first_last([e.get("completions/mean_length", float("nan")) for e in logs])[1],
        "rewards": [e["reward"] for e in logs],
        "checks": {
            "reward_disagreements": disagreements,
            "reward_samples": len(result["reward_samples"]),
            "heldout_rule_differs": abs(own["before"] - before) > 1e-9 or abs(own["after"] - after) > 1e-9,
        },
        "detail": result,
    }


def run_lit(
    args: argparse.Namespace, tmp: str, seed: int, iterations: int, before: float, budget_s: float | None
) -> dict:
    """``train.py fit`` on ``--lit-config`` with this benchmark's settings; times and final metrics.

    Validates after ``iterations`` generation batches (the same-completions row). With ``budget_s`` (TRL's training
    seconds of the same seed) it trains on until its own training seconds reach the budget and validates again there
    (the same-training-time figure); training seconds leave validation out."""
    max_steps = iterations * (4 if budget_s is not None else 1)  # one training step per GRPO iteration
    overrides = [
        "--seed_everything",
        str(seed),
        "--model.init_args.policy_name_or_path",
        args.policy,
        "--model.init_args.learning_rate",
        str(args.learning_rate),
        "--model.init_args.lr_schedule",
        "constant",
        "--model.init_args.warmup_steps",
        "0",
        "--model.init_args.weight_decay",
        str(args.weight_decay),
        "--model.init_args.max_grad_norm",
        str(args.max_grad_norm),
        "--model.init_args.num_generations",
        str(args.num_generations),
        "--model.init_args.max_new_tokens",
        str(args.max_new_tokens),
        "--model.init_args.temperature",
        str(args.temperature),
        "--model.init_args.top_k",
        "0",
        "--model.init_args.top_p",
        "1.0",
        "--model.init_args.beta",
        str(args.beta),
        "--model.init_args.scale_rewards",
        "true" if args.scale_rewards == "group" else "false",
        "--model.init_args.loss_averaging",
        LOSS_AVERAGING[args.loss_type],
        "--model.init_args.clip_range",
        str(args.clip_range),
        "--model.init_args.clip_range_high",
        "null",
        "--model.init_args.num_iterations",
        str(args.num_iterations),
        "--model.init_args.num_minibatches",
        str(args.num_minibatches),
        "--model.init_args.gradient_accumulation_steps",
        "1",
        "--model.init_args.missing_eos_penalty",
        "null",
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
        "--trainer.num_sanity_val_steps",
        "0",
    ]
    save_dir = os.path.join(tmp, f"lit_{seed}")
    lit_run = timed_lit_run(
        args.lit_config, save_dir, *overrides, *args.extra, budget_s=budget_s, min_batches=iterations
    )
    wall, timer, scalars, resolved = lit_run["wall"], lit_run["timer"], lit_run["scalars"], lit_run["config"]
    matched = next(v for v in timer["validations"] if v["batches"] == iterations)
    final = timer["validations"][-1]
    # GRPOModule logs `iteration` with each iteration's scalars: keep those of the matched iterations
    iteration_at = dict(scalars.get("iteration", []))

    def matched_values(tag: str) -> list[float]:
        return [value for step, value in scalars.get(tag, []) if iteration_at.get(step, math.inf) <= iterations]

    rewards = matched_values("reward")
    reward_first, reward_last = first_last(rewards)
    return {
        "system": f"lit_rlhf GRPOModule, seed {seed}",
        "completions": iterations * args.batch_size * args.num_generations,
        "iterations": iterations,
        "train_s": matched["train_s"],
        "process_s": wall,
        "before": before,
        "after": matched["metrics"].get("val/exact_match", float("nan")),
        "eos_after": matched["metrics"].get("val/eos_rate", float("nan")),
        "reward_first": reward_first,
        "reward_last": reward_last,
        "length_last": first_last(matched_values("completions/mean_length"))[1],
        "rewards": rewards,
        "same_time": None
        if budget_s is None or matched["train_s"] > budget_s  # slower than TRL: no same-time point past the match
        else {
            "budget_s": budget_s,
            "train_s": final["train_s"],
            "completions": final["batches"] * args.batch_size * args.num_generations,
            "after": final["metrics"].get("val/exact_match", float("nan")),
        },
        "config": resolved,
    }


def markdown(rows: list[dict], goal: float) -> str:
    lines = [
        "| system | completions | train s | completions/s | s / generation batch | held-out exact-match before → "
        "after | EOS rate after | train reward, first → last 5 batches | mean length, last 5 | process wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['completions']} | {r['train_s']:.1f} | {r['completions'] / r['train_s']:.1f} "
            f"| {r['train_s'] / max(r['iterations'], 1):.2f} | {r['before']:.1%} → {r['after']:.1%} "
            f"| {r['eos_after']:.1%} | {r['reward_first']:.3f} → {r['reward_last']:.3f} | {r['length_last']:.1f} "
            f"| {r['process_s']:.1f} s |"
        )
    trl = [r for r in rows if r["system"].startswith("TRL")]
    lit = [r for r in rows if r["system"].startswith("lit_rlhf")]
    timed = [r["same_time"] for r in lit if r.get("same_time")]
    lines += same_time_table(lit, "completions")
    lines.append("")
    for name, group in (("TRL", trl), ("lit_rlhf", lit)):
        if group:
            speed = statistics.median(r["completions"] / r["train_s"] for r in group)
            before = statistics.median(r["before"] for r in group)
            after = statistics.median(r["after"] for r in group)
            lines.append(
                f"- {name}: median {speed:.1f} completions/s, median held-out exact-match {before:.1%} → {after:.1%} "
                f"after the same completions ({len(group)} runs)"
            )
    if timed:
        gain = statistics.median(r["same_time"]["after"] - r["before"] for r in lit if r.get("same_time"))
        lines.append(
            f"- lit_rlhf after TRL's training time: median exact-match change {gain * 100:+.1f} points ({len(timed)} "
            f"of {len(lit)} runs; a run slower than TRL's has no same-time point)"
        )
    if trl and lit:
        ratio = statistics.median(r["completions"] / r["train_s"] for r in lit) / statistics.median(
            r["completions"] / r["train_s"] for r in trl
        )
        verdict = "met" if ratio >= goal else "not met"
        lines.append(f"- completions/s ratio, lit_rlhf / TRL (medians): {ratio:.2f}x (goal {goal:.2f}x: {verdict})")
    return "\n".join(lines)


def notes(args: argparse.Namespace, rows: list[dict], lit_before: float | None) -> str:
    trl = [r for r in rows if r["system"].startswith("TRL")]
    lit = next((r for r in rows if "config" in r), None)
    setup = [r["detail"]["before_first_step_s"] + r["detail"]["after_last_step_s"] for r in trl]
    recompute = trl[0]["detail"]["settings"]["recomputes_old_logprobs"] if trl else None
    if args.loss_type == "bnpo":
        loss_note = (
            " = lit_rlhf `loss_averaging: token`: the per-token loss summed over the optimizer step's completions, "
            "divided by their tokens. Same on both sides."
        )
    elif args.loss_type == "dapo":
        loss_note = (
            " (TRL's default): the step's summed per-token loss divided by the generation batch's tokens / "
            f"{args.num_minibatches}; lit_rlhf `token` divides by the step's own tokens (`bnpo` is the exact match)."
        )
    else:
        loss_note = " = lit_rlhf `loss_averaging: sequence` (mean over each completion, then over completions)."
    model = lit["config"].get("model", {}).get("init_args", {}) if lit is not None else {}
    if lit is None:
        minibatches = "(lit_rlhf not run)"
    else:
        minibatches = (
            "lit_rlhf splits whole groups (`group_minibatches: true`)"
            if model.get("group_minibatches")
            else "lit_rlhf shuffles across prompts too (`group_minibatches: false`)"
        ) + (
            " and computes each prompt of a minibatch once for its completions on its KV cache "
            "(`shared_prompt_forward: true`: the same gradients, fewer token positions)."
            if model.get("shared_prompt_forward")
            else " and runs full rows (`shared_prompt_forward: false`)."
        )
    text = DIFFERENCES.format(
        recompute=(
            f"with {args.num_minibatches * args.num_iterations} optimizer steps per generation batch and no gradient "
            "accumulation, TRL recomputes the whole generation batch's log-probabilities with an extra no-grad forward "
            "pass before its first step"
            if recompute
            else "TRL takes them from the first step's own forward pass (one optimizer step per generation batch)"
            if recompute is not None
            else "(TRL not run)"
        ),
        loss_type=args.loss_type,
        loss_note=loss_note,
        minibatches=minibatches,
        scale_note="" if args.scale_rewards == "group" else " without the division by the std (scale_rewards none)",
        trl_setup=statistics.median(setup) if setup else float("nan"),
        data_seed=args.data_seed,
        lockstep=lockstep(rows),
        lit_config=args.lit_config,
        ckpt=args.checkpoint_every or "no",
        weight_decay=args.weight_decay,
        lr=args.learning_rate,
        max_grad_norm=args.max_grad_norm,
        beta=args.beta,
        threads=args.threads,
    )
    text += f"\n{REFERENCE} Starting held-out greedy exact-match of the SFT export here: "
    starts = []
    if trl:
        starts.append(f"{trl[0]['before']:.1%} (TRL worker's greedy answers)")
    if lit_before is not None:
        starts.append(f"{lit_before:.1%} (lit_rlhf.evaluate)")
    text += ", ".join(starts) + ".\n" if starts else "not measured.\n"
    if lit is not None:
        sources = [r.get("class_path", "?") for r in model.get("rewards") or []]
        text += f"- lit_rlhf's reward sources (from {args.lit_config}): {', '.join(sources) or 'none'}\n"
    return text


def lockstep(rows: list[dict]) -> str:
    """For each seed run by both systems: how many leading generation batches had the same mean training reward."""
    trl = {r["system"].rsplit(" ", 1)[-1]: r["rewards"] for r in rows if r["system"].startswith("TRL")}
    parts = []
    for r in rows:
        seed = r["system"].rsplit(" ", 1)[-1]
        if r["system"].startswith("lit_rlhf") and seed in trl:
            pairs = list(zip(trl[seed], r["rewards"]))
            same = next((i for i, (a, b) in enumerate(pairs) if abs(a - b) > 1e-9), len(pairs))
            parts.append(f"seed {seed}: {same} of {len(pairs)}")
    if not parts:
        return "measured here: not run on both systems."
    return (
        "measured here, leading generation batches with the same mean training reward on both systems: "
        + ", ".join(parts)
        + "."
    )


def checks(rows: list[dict]) -> str:
    """Warnings from the TRL runs' consistency checks ("" when all passed)."""
    lines = []
    for r in rows:
        if "checks" not in r:
            continue
        c, t = r["checks"], r["detail"]["tokenization"]
        if t["mismatches"]:
            lines.append(
                f"WARNING ({r['system']}): {t['mismatches']} of {t['rows_checked']} prompts tokenize differently in "
                f"TRL than in lit_rlhf, e.g. {t['first_mismatch']}"
            )
        if c["reward_disagreements"]:
            lines.append(
                f"WARNING ({r['system']}): TRL's reward differs from lit_rlhf's verifier on {c['reward_disagreements']}"
                f" of the first {c['reward_samples']} training completions"
            )
        if c["heldout_rule_differs"]:
            lines.append(f"WARNING ({r['system']}): the worker's exact-match rule disagrees with lit_rlhf's (held-out)")
    if not lines and any("checks" in r for r in rows):
        r = next(r for r in rows if "checks" in r)
        lines.append(
            f"checks passed: TRL's tokenization gives lit_rlhf's ids on all "
            f"{r['detail']['tokenization']['rows_checked']} prompts; TRL's reward equals lit_rlhf's verifier on the "
            f"first {r['checks']['reward_samples']} training "
            "completions of each run"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--trl-python",
        default=DEFAULT_TRL_PYTHON,
        help="python of the TRL venv (default: ../trl116-venv/bin/python beside the repository; see the setup)",
    )
    parser.add_argument("--lit-config", default="configs/arithmetic/grpo.yaml", help="lit_rlhf GRPO config")
    parser.add_argument("--skip-lit", action="store_true", help="run the TRL side only")
    parser.add_argument("--skip-trl", action="store_true", help="run the lit_rlhf side only")
    parser.add_argument("--policy", default="runs/arithmetic/sft/hf", help="SFT export: the starting policy")
    parser.add_argument(
        "--total-completions", type=int, default=6400, help="completions sampled in all (rounded up to whole batches)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per generation batch (config: 16)")
    parser.add_argument("--num-generations", type=int, default=None, help="completions per prompt (config: 8)")
    parser.add_argument(
        "--num-minibatches", type=int, default=None, help="optimizer steps per pass; TRL's steps_per_generation (2)"
    )
    parser.add_argument("--num-iterations", type=int, default=None, help="passes over each generation batch (1)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="sampling and evaluation length (20)")
    parser.add_argument("--temperature", type=float, default=None, help="sampling temperature (1.0)")
    parser.add_argument("--learning-rate", type=float, default=None, help="constant AdamW learning rate (3e-5)")
    parser.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (0)")
    parser.add_argument("--max-grad-norm", type=float, default=None, help="gradient clipping norm (1.0)")
    parser.add_argument("--beta", type=float, default=None, help="KL coefficient (0: no reference model)")
    parser.add_argument("--clip-range", type=float, default=None, help="ratio clip epsilon (0.2)")
    parser.add_argument(
        "--loss-type",
        choices=tuple(LOSS_AVERAGING),
        default=None,
        help="TRL loss_type; lit_rlhf: token for bnpo/dapo, sequence for grpo (config: token -> bnpo)",
    )
    parser.add_argument("--scale-rewards", choices=("group", "none"), default=None, help="(config: true -> group)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--data-seed", type=int, default=None, help="ArithmeticDataModule seed (train/held-out split)")
    parser.add_argument("--num-val", type=int, default=None, help="held-out prompts (512)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="runs per system, seeds --seed, --seed + 1, ...")
    parser.add_argument(
        "--no-same-time", action="store_true", help="stop lit_rlhf at --total-completions (no same-time figure)"
    )
    parser.add_argument("--goal", type=float, default=1.3, help="completions/s ratio the summary compares against")
    parser.add_argument("--out", default=None, help="append the table and notes to this markdown file")
    parser.add_argument("extra", nargs="*", help="more CLI arguments for lit_rlhf's train.py, after --")
    args = parser.parse_args()

    use_threads(args.threads)
    if not os.path.isfile(args.lit_config):
        sys.exit(f"{args.lit_config} not found (pass --lit-config; its GRPO settings are the defaults)")
    config_warnings = resolve_settings(args)
    per_batch = args.batch_size * args.num_generations
    if args.total_completions < 1 or per_batch % args.num_minibatches:
        sys.exit("need --total-completions >= 1 and batch-size x num-generations divisible by --num-minibatches")
    iterations = math.ceil(args.total_completions / per_batch)
    if not os.path.isdir(args.policy):
        sys.exit(f"{args.policy} is missing: run the SFT stage first (see the README)")
    if not args.skip_trl and not os.path.isfile(args.trl_python):
        sys.exit(f"{args.trl_python} not found; set up TRL's venv from the repository root:\n  {SETUP}")

    busy = load_warning()
    print(machine_line())
    print(busy, end="")
    settings = (
        f"settings: {iterations} generation batches of {args.batch_size} prompts x {args.num_generations} = "
        f"{iterations * per_batch} completions, {args.num_iterations} pass(es) x {args.num_minibatches} optimizer "
        f"steps of {per_batch // args.num_minibatches} completions per batch, max {args.max_new_tokens} new tokens, "
        f"temperature {args.temperature}, AdamW lr {args.learning_rate} constant, weight decay {args.weight_decay}, "
        f"clip norm {args.max_grad_norm}, beta {args.beta}, clip {args.clip_range}, TRL loss_type {args.loss_type} / "
        f"lit_rlhf loss_averaging {LOSS_AVERAGING[args.loss_type]}, scale_rewards {args.scale_rewards}, fp32, "
        f"{args.threads} thread(s), seeds {args.seed}..{args.seed + args.runs - 1}; policy {args.policy}; reward: "
        f"verifier exact match (1/0); held-out: {args.num_val} prompts (data seed {args.data_seed}), greedy"
    )
    print(settings, flush=True)
    for line in config_warnings:
        print(line, flush=True)
    rows = []
    versions_line = ""
    lit_before = None
    with tempfile.TemporaryDirectory(prefix="grpo_trl_bench_") as tmp:
        heldout = write_arithmetic_prompts(tmp, args.policy, args.num_val, args.data_seed)
        if not args.skip_lit:
            from lit_rlhf.evaluate import evaluate_arithmetic

            lit_before = evaluate_arithmetic(
                args.policy, num_val=args.num_val, data_seed=args.data_seed, max_new_tokens=args.max_new_tokens
            )["exact_match"]
            print(f"lit_rlhf.evaluate on {args.policy}: held-out exact-match {lit_before:.1%}", flush=True)
        for run in range(args.runs):
            seed = args.seed + run
            budget = None
            if not args.skip_trl:
                row = run_trl(args, tmp, heldout, iterations, seed)
                rows.append(row)
                v, s = row["detail"]["versions"], row["detail"]["settings"]
                versions_line = (
                    f"TRL venv: trl {v['trl']}, transformers {v['transformers']}, torch {v['torch']}, datasets "
                    f"{v['datasets']}, {v['threads']} thread(s); GRPOConfig as resolved: per_device_train_batch_size "
                    f"{s['per_device_train_batch_size']} (completions), steps_per_generation "
                    f"{s['steps_per_generation']}, generation_batch_size {s['generation_batch_size']}, "
                    f"gradient_accumulation_steps {s['gradient_accumulation_steps']}, num_iterations "
                    f"{s['num_iterations']}, max_steps {s['max_steps']}, loss_type {s['loss_type']}, scale_rewards "
                    f"{s['scale_rewards']}, optimizer {s['optimizer']}, scheduler {s['lr_scheduler_type']}, bf16 "
                    f"{s['bf16']}, gradient_checkpointing {s['gradient_checkpointing']}"
                )
                print(
                    f"run {run + 1}: {row['system']}: {row['completions']} completions in {row['train_s']:.1f}s "
                    f"({row['completions'] / row['train_s']:.1f}/s), exact-match {row['before']:.1%} → "
                    f"{row['after']:.1%}",
                    flush=True,
                )
                budget = None if args.no_same_time else row["train_s"]
            if not args.skip_lit:
                row = run_lit(args, tmp, seed, iterations, lit_before, budget)
                rows.append(row)
                print(
                    f"run {run + 1}: {row['system']}: {row['completions']} completions in {row['train_s']:.1f}s "
                    f"({row['completions'] / row['train_s']:.1f}/s), exact-match {row['before']:.1%} → "
                    f"{row['after']:.1%}",
                    flush=True,
                )
    versions_line = (versions_line + "\n" if versions_line else "") + lit_versions()
    header = busy + settings + ("\n" + "\n".join(config_warnings) if config_warnings else "")
    report(args.out, header, versions_line, markdown(rows, args.goal), checks(rows), notes(args, rows, lit_before))


if __name__ == "__main__":
    main()
