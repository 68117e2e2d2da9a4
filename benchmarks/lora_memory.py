"""Memory and speed of PPO with LoRA against full fine-tuning, on a ~100M-parameter Llama on one CPU process.

    OMP_NUM_THREADS=2 python benchmarks/lora_memory.py --out lora_memory.json
    OMP_NUM_THREADS=1 python benchmarks/lora_memory.py --hidden 64 --layers 2 --intermediate 128 --vocab 0  # smoke run

Builds the random Llama of ``benchmarks/fsdp_memory.py`` (hidden 768, 12 layers, MLP 2048, 20,480 embedding rows
tied to the LM head: about 100M parameters, word-level arithmetic tokenizer, saved as a Hugging Face folder; no
download) and runs ``python train.py fit --config configs/arithmetic/ppo_verifier.yaml`` with it as the policy, each
setting in its own process:

- ``full``: full fine-tuning (actor and critic trained in full, the reference a frozen copy);
- ``lora``: ``peft.LoraConfig`` (``--rank``, ``--alpha``, ``target_modules: all-linear``) on the actor and on a
  critic with a backbone of its own (``critic_backbone: separate``); the reference is the actor with its adapters off;
- ``lora-shared``: the same with ``critic_backbone: shared`` (the critic's adapter and value head on the actor's
  frozen backbone: one backbone in all).

A callback (:class:`LoraProbe`) records, after the last iteration: bytes of the distinct parameters of the trained
and frozen models (each tensor counted once, split into trained and frozen), of the gradients (read in
``on_before_optimizer_step`` of each optimizer's last step) and of the AdamW states; the peak resident memory of the
process (``ru_maxrss``); and iterations per second over the iterations after ``--skip`` warm-up ones (each timed
from its batch start to its batch end). Prints a table and the ratios LoRA / full of parameters + gradients +
optimizer states (goal: at most 0.4) and of peak RSS, measured in the same invocation. ``--out`` writes every figure
as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import lightning.pytorch as pl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.fsdp_memory import (  # noqa: E402
    MODEL_SIZES,
    PPO_CONFIG,
    build_policy,
    mib,
    peak_rss_bytes,
    rss_now_bytes,
    train,
    write_config,
)


def lora_args(rank: int, alpha: int, shared: bool) -> list[str]:
    """CLI arguments of a ``peft.LoraConfig`` on every linear layer (and the critic's placement)."""
    prefix = "--model.init_args.peft_config"
    return [
        f"{prefix}.class_path",
        "peft.LoraConfig",
        f"{prefix}.init_args.r",
        str(rank),
        f"{prefix}.init_args.lora_alpha",
        str(alpha),
        f"{prefix}.init_args.target_modules",
        "all-linear",
        "--model.init_args.critic_backbone",
        "shared" if shared else "separate",
    ]


def settings(rank: int, alpha: int) -> dict[str, list[str]]:
    """Extra ``train.py`` arguments of each setting."""
    return {"full": [], "lora": lora_args(rank, alpha, False), "lora-shared": lora_args(rank, alpha, True)}


def tensor_bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size()


class LoraProbe(pl.Callback):
    """Bytes of distinct trained and frozen parameters, gradients and optimizer states, peak RSS and iterations per
    second; written to ``path`` as JSON at the end of training.

    Args:
        path: the JSON file.
        skip: first iterations left out of the timing (allocator warm-up, first optimizer states).
    """

    def __init__(self, path: str, skip: int = 1) -> None:
        self.path = path
        self.skip = skip
        self.gradients: dict[int, int] = {}
        self.batches = 0
        self.seconds = 0.0
        self.timed = 0
        self.rss_at_start = 0
        self._start = 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self.rss_at_start = rss_now_bytes()

    @staticmethod
    def _optimizers(pl_module) -> list:
        optimizers = pl_module.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return [getattr(o, "optimizer", o) for o in optimizers]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        raw = getattr(optimizer, "optimizer", optimizer)
        params = [p for group in raw.param_groups for p in group["params"]]
        self.gradients[id(raw)] = sum(tensor_bytes(p.grad) for p in params if p.grad is not None)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        seconds = time.perf_counter() - self._start
        self.batches += 1
        if self.batches > self.skip:
            self.timed += 1
            self.seconds += seconds

    def on_train_end(self, trainer, pl_module) -> None:
        distinct = {}
        for model in [*pl_module.trained_models(), *pl_module.frozen_models()]:
            for p in model.parameters():
                distinct[p.data_ptr()] = p
        trained = [p for p in distinct.values() if p.requires_grad]
        optimizers = self._optimizers(pl_module)
        states = sum(
            tensor_bytes(v)
            for o in optimizers
            for state in o.state.values()
            for v in state.values()
            if hasattr(v, "numel") and v.dim() > 0
        )
        record = {
            "trained_parameters": sum(tensor_bytes(p) for p in trained),
            "trained_count": sum(p.numel() for p in trained),
            "frozen_parameters": sum(tensor_bytes(p) for p in distinct.values() if not p.requires_grad),
            "gradients": sum(self.gradients.values()),
            "optimizer_states": states,
            "iterations": self.batches,
            "timed_iterations": self.timed,
            "timed_seconds": self.seconds,
            "iterations_per_s": self.timed / self.seconds if self.seconds else 0.0,
            "rss_at_train_start_bytes": self.rss_at_start,
            "peak_rss_bytes": peak_rss_bytes(),
        }
        record["total"] = record["trained_parameters"] + record["frozen_parameters"] + record["gradients"] + states
        with open(self.path, "w") as f:
            json.dump(record, f, indent=1)


def run_setting(name: str, config: str, work: str, extra: list[str], skip: int) -> dict:
    """One ``train.py fit`` process under setting ``name``: its probe record and wall seconds."""
    path = os.path.join(work, f"probe_{name}.json")
    probe = [
        "--trainer.callbacks+=benchmarks.lora_memory.LoraProbe",
        f"--trainer.callbacks.init_args.path={path}",
        f"--trainer.callbacks.init_args.skip={skip}",
    ]
    wall = train(name, config, work, [*extra, *probe])
    with open(path) as f:
        return {**json.load(f), "wall_s": wall}


def table(results: dict[str, dict]) -> list[str]:
    lines = [
        "| setting | trained parameters | trained params MiB | frozen params MiB | grads MiB | AdamW MiB "
        "| params + grads + AdamW MiB | peak RSS MiB | iterations/s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['trained_count']:,} | {mib(r['trained_parameters'])} | {mib(r['frozen_parameters'])} "
            f"| {mib(r['gradients'])} | {mib(r['optimizer_states'])} | {mib(r['total'])} "
            f"| {mib(r['peak_rss_bytes'])} | {r['iterations_per_s']:.3f} | {r['wall_s']:.1f} |"
        )
    return lines


def ratios(results: dict[str, dict], goal: float) -> list[str]:
    if "full" not in results:
        return []
    full = results["full"]
    lines = []
    for name, r in results.items():
        if name == "full":
            continue
        ratio = r["total"] / full["total"]
        verdict = "met" if ratio <= goal else "NOT met"
        lines.append(
            f"{name} / full: params + grads + AdamW {ratio:.3f}x (goal <= {goal}: {verdict})"
            f", peak RSS {r['peak_rss_bytes'] / full['peak_rss_bytes']:.3f}x"
            f", iterations/s {r['iterations_per_s'] / full['iterations_per_s']:.2f}x"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = MODEL_SIZES["ppo"]
    parser.add_argument("--hidden", type=int, default=size["hidden"])
    parser.add_argument("--layers", type=int, default=size["layers"])
    parser.add_argument("--intermediate", type=int, default=size["intermediate"])
    parser.add_argument("--vocab", type=int, default=size["vocab"], help="embedding rows (0: the tokenizer's)")
    parser.add_argument("--iterations", type=int, default=4, help="PPO iterations (trainer.max_steps)")
    parser.add_argument("--skip", type=int, default=1, help="warm-up iterations left out of iterations/s")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per iteration")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="response length limit")
    parser.add_argument("--rank", type=int, default=16, help="LoRA r")
    parser.add_argument("--alpha", type=int, default=32, help="LoRA alpha")
    parser.add_argument("--settings", nargs="+", default=["full", "lora", "lora-shared"])
    parser.add_argument("--goal", type=float, default=0.4, help="LoRA / full ratio to meet")
    parser.add_argument("--out", default=None, help="write every figure here as JSON")
    parser.add_argument("--keep", default=None, help="keep the model, configs, logs and runs here")
    args = parser.parse_args(argv)

    from benchmarks.common import machine_line

    print(machine_line())
    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="lora_memory_")
    os.makedirs(work, exist_ok=True)
    policy = os.path.join(work, "policy")
    count = build_policy(policy, args.hidden, args.layers, args.intermediate, args.vocab)
    print(f"policy: {count:,} parameters (float32), saved to {policy}")
    config = write_config(
        os.path.join(work, "ppo_lora_memory.yaml"),
        PPO_CONFIG,
        os.path.join(work, "runs"),
        model={
            "policy_name_or_path": policy,
            "max_new_tokens": args.max_new_tokens,
            "ppo_epochs": 1,
            "num_minibatches": 1,
        },
        data={"batch_size": args.batch_size},
        trainer={"max_steps": args.iterations, "accelerator": "cpu", "devices": 1},
    )
    extras = settings(args.rank, args.alpha)
    results = {}
    for name in args.settings:
        results[name] = run_setting(name, config, work, extras[name], args.skip)
        print(f"{name}: {results[name]['wall_s']:.1f} s", flush=True)
    lines = table(results) + [""] + ratios(results, args.goal)
    print("\n".join(lines))
    if args.out:
        summary = {"machine": machine_line(), "parameters": count, "args": vars(args), "results": results}
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=1)
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
