"""Per-process memory of PPO on a ~100M-parameter Llama with 2 processes, under DDP and under FSDP2.

    OMP_NUM_THREADS=1 python benchmarks/fsdp_memory.py --out fsdp_memory.json
    OMP_NUM_THREADS=1 python benchmarks/fsdp_memory.py --hidden 64 --layers 2 --intermediate 128 --vocab 0  # smoke run

Builds a randomly initialised Llama (hidden 768, 12 layers, MLP 2048, a 20,480-row embedding table tied to the LM
head: about 100M parameters) with the word-level arithmetic tokenizer and saves it as a Hugging Face folder (no
download). Then runs the README's command, ``python train.py fit --config configs/arithmetic/ppo_verifier.yaml``,
with that folder as the policy (the critic starts from it, the reference is a frozen copy, the reward is the task's
verifier), on 2 CPU processes (gloo) for a few iterations of a few prompts per process, three times:

- ``ddp``: ``--trainer.strategy ddp``, every process holds whole models;
- ``fsdp2``: ``--trainer.strategy fsdp2``, actor, critic and the frozen reference sharded over the 2 processes;
- ``fsdp2-whole-frozen``: the same with ``--model.init_args.shard_frozen_models false`` (the reference kept whole).

A callback (:class:`MemoryProbe`, added with ``--trainer.callbacks+=benchmarks.fsdp_memory.MemoryProbe``) records on
every process, after the last iteration:

- bytes of the actor's and the critic's parameters and AdamW states (this process's shards under FSDP2,
  :func:`lit_rlhf.sharding.sharded_bytes`), read at the end of the iteration;
- bytes of their gradients, read in ``on_before_optimizer_step`` of each model's last optimizer step (gradients are
  set to ``None`` at the start of the next step, so this is where they all exist);
- bytes of the frozen models' parameters (the reference; the verifier has no model);
- the process's resident memory (RSS): at the start of training and its peak until then (loading and sharding), at
  the end of the last iteration, at the end after glibc's ``malloc_trim(0)`` (without the freed memory the heap
  keeps), and its peak over the whole process (``getrusage(RUSAGE_SELF).ru_maxrss``).

Prints a table per process and the ratios FSDP2 / DDP of the largest per-process figures: parameters + gradients +
optimizer states of the trained models (goal: at most 0.55), the same with the frozen models' parameters added, and
resident memory. ``--mmap-threshold 1048576`` sets ``MALLOC_MMAP_THRESHOLD_`` in the runs, so that freed buffers of
1 MiB or more leave the resident memory at once. ``--out`` writes every figure as JSON.

``--gpu`` instead runs ``configs/arithmetic/sft.yaml`` (30 optimizer steps) and ``configs/arithmetic/grpo.yaml``
(8 iterations) as shipped but for the model: a random Llama of about 1B parameters (hidden 2048, 18 layers, MLP 5632,
32,000 embedding rows), under ``--trainer.strategy fsdp2`` on one GPU in ``bf16-mixed``, and prints per stage the
tokens per second after 2 warm-up batches (:class:`ThroughputProbe`: SFT's trained tokens, GRPO's sampled answer
tokens) and the peak GPU memory allocated and reserved:

    python benchmarks/fsdp_memory.py --gpu --out fsdp_gpu.json
    OMP_NUM_THREADS=1 python benchmarks/fsdp_memory.py --gpu --accelerator cpu --precision 32-true \\
        --hidden 64 --layers 2 --intermediate 128 --vocab 0 --sft-steps 4 --grpo-steps 3 --skip 1   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import lightning.pytorch as pl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PPO_CONFIG = "configs/arithmetic/ppo_verifier.yaml"
SETTINGS = {
    "ddp": ["--trainer.strategy", "ddp"],
    "fsdp2": ["--trainer.strategy", "fsdp2"],
    "fsdp2-whole-frozen": ["--trainer.strategy", "fsdp2", "--model.init_args.shard_frozen_models", "false"],
}
GPU_STAGES = {
    "sft": ("configs/arithmetic/sft.yaml", "model_name_or_path", 30),
    "grpo": ("configs/arithmetic/grpo.yaml", "policy_name_or_path", 8),
}
"""``--gpu`` stages: base config, the option naming the model, default optimizer steps (SFT) or iterations (GRPO)."""
MODEL_SIZES = {
    "ppo": {"hidden": 768, "layers": 12, "intermediate": 2048, "vocab": 20480},
    "gpu": {"hidden": 2048, "layers": 18, "intermediate": 5632, "vocab": 32000},
}
"""Llama sizes: ~100M parameters for the PPO memory runs, ~1B for ``--gpu``."""
MODEL_NAMES = {1: ["policy"], 2: ["actor", "critic"]}
"""Names of a module's trained models by their count (SFT, GRPO: the policy; PPO: actor, critic)."""


def rss_now_bytes() -> int:
    """This process's resident memory now (``VmRSS``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (``ru_maxrss``, KiB on Linux), in bytes. The kernel updates that
    high-water mark lazily (when memory is unmapped), so the resident memory of this moment counts too."""
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_now_bytes())


def rss_after_malloc_trim() -> int:
    """Resident memory after handing the C heap's free pages back to the system (glibc ``malloc_trim(0)``): what
    live memory takes, without the freed memory the allocator keeps for reuse; ``0`` without glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return 0
    return rss_now_bytes()


def local_bytes(model) -> int:
    """Bytes of ``model``'s parameters held by this process (its shards of sharded ones)."""
    from lit_rlhf.sharding import local_tensor

    return sum(local_tensor(p).numel() * local_tensor(p).element_size() for p in model.parameters())


class MemoryProbe(pl.Callback):
    """Records this process's bytes of trained parameters, gradients and optimizer states, of frozen parameters, and
    its resident memory, after every training batch; writes the last record to ``<out_dir>/rank<r>.json`` at the
    end of training.

    Args:
        out_dir: folder of the per-process JSON files.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.gradients: dict[int, int] = {}
        self.record: dict | None = None
        self.batches = 0
        self.rss_at_start = 0
        self.peak_at_start = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.rss_at_start = rss_now_bytes()
        self.peak_at_start = peak_rss_bytes()

    @staticmethod
    def _owner(optimizer, models) -> int | None:
        """Index of the model among ``models`` whose parameters ``optimizer`` steps."""
        raw = getattr(optimizer, "optimizer", optimizer)
        stepped = {id(p) for group in raw.param_groups for p in group["params"]}
        for index, model in enumerate(models):
            if any(id(p) in stepped for p in model.parameters()):
                return index
        return None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        from lit_rlhf.sharding import sharded_bytes

        models = pl_module.trained_models()
        index = self._owner(optimizer, models)
        if index is not None:
            self.gradients[index] = sharded_bytes(models[index])["gradients"]

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        from lit_rlhf.sharding import is_sharded, sharded_bytes

        models = pl_module.trained_models()
        optimizers = pl_module.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        self.batches += 1
        names = MODEL_NAMES.get(len(models), [f"model{i}" for i in range(len(models))])
        trained = {}
        for index, model in enumerate(models):
            optimizer = next((o for o in optimizers if self._owner(o, models) == index), None)
            figures = sharded_bytes(model, getattr(optimizer, "optimizer", optimizer))
            figures["gradients"] = self.gradients.get(index, 0)
            figures["num_parameters"] = sum(p.numel() for p in model.parameters())
            figures["sharded"] = is_sharded(model)
            trained[names[index]] = figures
        frozen = {id(m): m for m in pl_module.frozen_models()}.values()
        self.record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "strategy": type(trainer.strategy).__name__,
            "iterations": self.batches,
            "trained": trained,
            "frozen_parameters": sum(local_bytes(m) for m in frozen),
            "frozen_sharded": [is_sharded(m) for m in frozen],
            "rss_at_train_start_bytes": self.rss_at_start,
            "peak_rss_at_train_start_bytes": self.peak_at_start,
            "rss_bytes": rss_now_bytes(),
            "peak_rss_bytes": peak_rss_bytes(),
        }

    def on_train_end(self, trainer, pl_module) -> None:
        if self.record is None:
            return
        self.record["peak_rss_bytes"] = peak_rss_bytes()
        self.record["rss_trimmed_bytes"] = rss_after_malloc_trim()
        os.makedirs(self.out_dir, exist_ok=True)
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(self.record, f, indent=1)


class ThroughputProbe(pl.Callback):
    """Tokens per second of training batches after ``skip`` warm-up batches, and peak memory; written to ``path``
    as JSON by rank 0 at the end of training.

    Tokens: an SFT batch's real tokens (its attention mask's sum); a GRPO iteration's sampled answer tokens (the
    logged mean answer length x prompts x ``num_generations``). Each batch is timed from its start to its end, with
    the device synchronised at both.

    Args:
        path: the JSON file.
        skip: first batches left out of the timing (allocator and kernel warm-up).
    """

    def __init__(self, path: str, skip: int = 2) -> None:
        self.path = path
        self.skip = skip
        self.batches = 0
        self.timed_batches = 0
        self.seconds = 0.0
        self.tokens = 0.0
        self.kind = ""
        self._start = 0.0

    @staticmethod
    def _sync(pl_module) -> None:
        import torch

        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._sync(pl_module)
        self._start = time.perf_counter()

    def _batch_tokens(self, trainer, pl_module, batch) -> float:
        if "attention_mask" in batch:
            self.kind = "trained tokens"
            return float(batch["attention_mask"].sum())
        lengths = [v for k, v in trainer.callback_metrics.items() if k.endswith("completions/mean_length")]
        if not lengths:
            raise RuntimeError(f"no completions/mean_length among the logged {sorted(trainer.callback_metrics)}")
        self.kind = "sampled answer tokens"
        rows = batch["prompt_input_ids"].size(0) * int(pl_module.hparams.get("num_generations", 1))
        return float(lengths[0]) * rows

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync(pl_module)
        seconds = time.perf_counter() - self._start
        tokens = self._batch_tokens(trainer, pl_module, batch)
        self.batches += 1
        if self.batches > self.skip:
            self.timed_batches += 1
            self.seconds += seconds
            self.tokens += tokens

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        cuda = pl_module.device.type == "cuda"
        record = {
            "module": type(pl_module).__name__,
            "device": torch.cuda.get_device_name(pl_module.device) if cuda else "cpu",
            "precision": str(trainer.precision),
            "strategy": type(trainer.strategy).__name__,
            "parameters": sum(p.numel() for m in pl_module.trained_models() for p in m.parameters()),
            "tokens": self.kind,
            "batches": self.batches,
            "timed_batches": self.timed_batches,
            "seconds": self.seconds,
            "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
            "peak_allocated_bytes": torch.cuda.max_memory_allocated(pl_module.device) if cuda else 0,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(pl_module.device) if cuda else 0,
            "peak_rss_bytes": peak_rss_bytes(),
        }
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                json.dump(record, f, indent=1)


def trained_total(record: dict) -> int:
    """Parameters + gradients + optimizer states of every trained model, in bytes."""
    return sum(m["parameters"] + m["gradients"] + m["optimizer_states"] for m in record["trained"].values())


def build_policy(path: str, hidden: int, layers: int, intermediate: int, vocab: int) -> int:
    """Save a random Llama with the word-level arithmetic tokenizer to ``path``; its parameter count."""
    import torch

    from lit_rlhf.models import build_word_tokenizer
    from lit_rlhf.models.tiny import build_tiny_llama

    torch.manual_seed(0)
    tokenizer = build_word_tokenizer()
    heads = max(1, hidden // 64)
    overrides = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
    }
    if vocab:
        overrides["vocab_size"] = vocab
    model = build_tiny_llama(tokenizer, overrides)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


def write_config(
    path: str,
    base: str,
    run_root: str,
    model: dict | None = None,
    data: dict | None = None,
    trainer: dict | None = None,
) -> str:
    """Write to ``path`` the config ``base`` (relative to the repository) with ``model``, ``data`` and ``trainer``
    values replaced, no validation, no checkpoint, no progress bar, no callback, and runs under ``run_root``."""
    import yaml

    with open(os.path.join(ROOT, base)) as f:
        config = yaml.safe_load(f)
    config["model"]["init_args"].update(model or {})
    config["data"]["init_args"].update({"num_val": 8, "eval_batch_size": 8, **(data or {})})
    config["trainer"].update(
        {
            "val_check_interval": None,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "callbacks": [],
            **(trainer or {}),
        }
    )
    config["trainer"]["logger"]["init_args"].update(save_dir=run_root, name="fsdp_memory")
    with open(path, "w") as f:
        yaml.safe_dump(config, f)
    return path


def ppo_config(path: str, policy: str, run_root: str, args: argparse.Namespace) -> str:
    """``configs/arithmetic/ppo_verifier.yaml`` resized for the memory probe: ``policy``, one PPO epoch of one
    minibatch over ``args.batch_size`` prompts per process, ``args.iterations`` iterations, 2 CPU processes."""
    return write_config(
        path,
        PPO_CONFIG,
        run_root,
        model={
            "policy_name_or_path": policy,
            "max_new_tokens": args.max_new_tokens,
            "ppo_epochs": 1,
            "num_minibatches": 1,
        },
        data={"batch_size": args.batch_size},
        trainer={"max_steps": args.iterations, "accelerator": "cpu", "devices": 2},
    )


def train(name: str, config: str, work: str, extra: list[str], env: dict[str, str] | None = None) -> float:
    """``python train.py fit --config <config> <extra>`` as run ``name`` (its log: ``<work>/<name>.log``); wall
    seconds. A failed run stops the benchmark with the end of its log."""
    command = [
        sys.executable,
        "train.py",
        "fit",
        "--config",
        config,
        *extra,
        "--trainer.logger.init_args.version",
        name,
        "--hf_export.dirname",
        "null",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        "PYTHONPATH": ROOT,
        **(env or {}),
    }
    log_path = os.path.join(work, f"{name}.log")
    start = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        with open(log_path) as log:
            sys.exit(f"{name}: train.py exited with {done.returncode}; end of its output:\n{log.read()[-4000:]}")
    return wall


def run_setting(name: str, config: str, work: str, mmap_threshold: int | None = None) -> dict:
    """One 2-process ``train.py fit`` under setting ``name``; its per-process records and wall seconds. With
    ``mmap_threshold``, glibc serves every allocation of at least that many bytes with its own ``mmap`` (and unmaps
    it when freed) instead of from a heap that keeps freed memory resident (``MALLOC_MMAP_THRESHOLD_``)."""
    out_dir = os.path.join(work, f"probe_{name}")
    extra = [
        *SETTINGS[name],
        "--trainer.callbacks+=benchmarks.fsdp_memory.MemoryProbe",
        f"--trainer.callbacks.init_args.out_dir={out_dir}",
    ]
    env = {"MALLOC_MMAP_THRESHOLD_": str(mmap_threshold)} if mmap_threshold is not None else None
    wall = train(name, config, work, extra, env)
    records = []
    for rank in range(2):
        with open(os.path.join(out_dir, f"rank{rank}.json")) as f:
            records.append(json.load(f))
    return {"wall_s": wall, "ranks": records}


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def table(results: dict[str, dict]) -> list[str]:
    """Markdown rows: one per setting and process, MiB."""
    lines = [
        "| setting | rank | actor params | actor grads | actor AdamW | critic params | critic grads | critic AdamW "
        "| trained total | frozen params | RSS at training start | peak RSS before training | RSS at end "
        "| RSS at end, heap trimmed | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        for r in result["ranks"]:
            cells = []
            for model in r["trained"].values():
                cells += [mib(model["parameters"]), mib(model["gradients"]), mib(model["optimizer_states"])]
            lines.append(
                f"| {name} | {r['rank']} | " + " | ".join(cells) + f" | {mib(trained_total(r))} "
                f"| {mib(r['frozen_parameters'])} | {mib(r['rss_at_train_start_bytes'])} "
                f"| {mib(r['peak_rss_at_train_start_bytes'])} | {mib(r['rss_bytes'])} | {mib(r['rss_trimmed_bytes'])} "
                f"| {mib(r['peak_rss_bytes'])} |"
            )
    return lines


def ratios(results: dict[str, dict], goal: float) -> list[str]:
    """The FSDP2 settings' largest per-process figures over DDP's."""

    def largest(name: str, key) -> int:
        return max(key(r) for r in results[name]["ranks"])

    measures = {
        "params + grads + AdamW states (trained)": trained_total,
        "the same + frozen params": lambda r: trained_total(r) + r["frozen_parameters"],
        "peak RSS": lambda r: r["peak_rss_bytes"],
        "RSS at end": lambda r: r["rss_bytes"],
        "RSS at end, heap trimmed": lambda r: r["rss_trimmed_bytes"],
    }
    lines = []
    for name in results:
        if name == "ddp" or "ddp" not in results:
            continue
        for label, key in measures.items():
            ratio = largest(name, key) / largest("ddp", key)
            verdict = ""
            if label.startswith("params + grads"):
                verdict = f" (goal <= {goal}: {'met' if ratio <= goal else 'NOT met'})"
            lines.append(f"{name} / ddp, {label}: {ratio:.3f}x{verdict}")
    return lines


def gpu_stages(args: argparse.Namespace, work: str, policy: str) -> dict[str, dict]:
    """Each stage of ``args.stages`` under FSDP2 on one device: its :class:`ThroughputProbe` record and wall
    seconds."""
    results = {}
    for stage in args.stages:
        base, model_key, steps = GPU_STAGES[stage]
        config = write_config(
            os.path.join(work, f"{stage}.yaml"),
            base,
            os.path.join(work, "runs"),
            model={model_key: policy},
            trainer={
                "max_steps": getattr(args, f"{stage}_steps") or steps,
                "accelerator": args.accelerator,
                "devices": 1,
                "precision": args.precision,
            },
        )
        out = os.path.join(work, f"throughput_{stage}.json")
        extra = [
            "--trainer.strategy",
            "fsdp2",
            "--trainer.callbacks+=benchmarks.fsdp_memory.ThroughputProbe",
            f"--trainer.callbacks.init_args.path={out}",
            f"--trainer.callbacks.init_args.skip={args.skip}",
        ]
        wall = train(stage, config, work, extra)
        with open(out) as f:
            results[stage] = {**json.load(f), "wall_s": wall}
        print(f"{stage}: {wall:.1f} s")
    return results


def gpu_table(results: dict[str, dict]) -> list[str]:
    """Markdown rows of :func:`gpu_stages`'s records."""
    lines = [
        "| stage | device | precision | batches timed | tokens/s | peak allocated GiB | peak reserved GiB "
        "| peak RSS GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage, r in results.items():
        lines.append(
            f"| {stage} ({r['tokens']}) | {r['device']} | {r['precision']} | {r['timed_batches']} "
            f"| {r['tokens_per_s']:,.0f} | {r['peak_allocated_bytes'] / 2**30:.2f} "
            f"| {r['peak_reserved_bytes'] / 2**30:.2f} | {r['peak_rss_bytes'] / 2**30:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="SFT and GRPO on one device under FSDP2: tokens/s, memory")
    parser.add_argument("--hidden", type=int, default=None, help="hidden size (default 768; 2048 with --gpu)")
    parser.add_argument("--layers", type=int, default=None, help="decoder blocks (default 12; 18 with --gpu)")
    parser.add_argument("--intermediate", type=int, default=None, help="MLP size (default 2048; 5632 with --gpu)")
    parser.add_argument(
        "--vocab", type=int, default=None, help="embedding rows (default 20480; 32000 with --gpu; 0: the tokenizer's)"
    )
    parser.add_argument("--iterations", type=int, default=2, help="PPO iterations (trainer.max_steps)")
    parser.add_argument("--batch-size", type=int, default=2, help="PPO prompts per process per iteration")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="PPO response length limit")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=None,
        help="bytes: set MALLOC_MMAP_THRESHOLD_ in the runs (freed large buffers leave the resident memory)",
    )
    parser.add_argument("--goal", type=float, default=0.55, help="FSDP2 / DDP ratio to meet (trained models)")
    parser.add_argument("--stages", nargs="+", default=list(GPU_STAGES), choices=list(GPU_STAGES), help="--gpu")
    parser.add_argument("--sft-steps", type=int, default=None, help="--gpu: SFT optimizer steps (default 30)")
    parser.add_argument("--grpo-steps", type=int, default=None, help="--gpu: GRPO iterations (default 8)")
    parser.add_argument("--skip", type=int, default=2, help="--gpu: warm-up batches left out of tokens/s")
    parser.add_argument("--accelerator", default="gpu", help="--gpu: trainer.accelerator (cpu: a smoke run)")
    parser.add_argument("--precision", default="bf16-mixed", help="--gpu: trainer.precision")
    parser.add_argument("--out", default=None, help="write every figure here as JSON")
    parser.add_argument("--keep", default=None, help="keep the model, configs, logs and runs here")
    args = parser.parse_args(argv)

    from benchmarks.common import machine_line

    print(machine_line())
    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="fsdp_memory_")
    os.makedirs(work, exist_ok=True)
    size = MODEL_SIZES["gpu" if args.gpu else "ppo"]
    size = {key: size[key] if getattr(args, key) is None else getattr(args, key) for key in size}
    policy = os.path.join(work, "policy")
    count = build_policy(policy, **size)
    print(f"policy: {count:,} parameters (float32), saved to {policy}")
    if args.gpu:
        results = gpu_stages(args, work, policy)
        lines = gpu_table(results)
    else:
        config = ppo_config(os.path.join(work, "ppo_memory.yaml"), policy, os.path.join(work, "runs"), args)
        results = {}
        for name in args.settings:
            results[name] = run_setting(name, config, work, args.mmap_threshold)
            print(f"{name}: 2 processes, {results[name]['wall_s']:.1f} s")
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
