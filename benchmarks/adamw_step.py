"""Time of one AdamW step with each of torch's kernels (``adamw_implementation``) on a model's parameters.

    .venv/bin/python benchmarks/adamw_step.py                        # the tiny arithmetic Llama (1.1M parameters)
    .venv/bin/python benchmarks/adamw_step.py --model-config '{"hidden_size": 512, "intermediate_size": 2048}'

Builds ``tiny-arithmetic`` with the given ``LlamaConfig`` overrides, fills every gradient with random values, and
times ``optimizer.step()`` (the same parameter groups as the modules build: no decay on biases and norms) for
``for_loop``, ``foreach`` and ``fused``, the kernels alternating round by round. Prints the median milliseconds per
step and each kernel's speed-up over ``for_loop`` (ratio of medians).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import print_machine, print_step_medians, use_threads  # noqa: E402

KERNELS = ("for_loop", "foreach", "fused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", type=json.loads, default=None, help="JSON of LlamaConfig overrides")
    parser.add_argument("--steps", type=int, default=50, help="optimizer steps timed per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds; each times every kernel once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timed with torch.cuda.synchronize())")
    args = parser.parse_args()
    use_threads(args.threads)
    import torch

    from lit_rlhf.modules import SFTModule

    print_machine()
    torch.manual_seed(0)
    module = SFTModule(model_config=args.model_config).to(args.device)
    synchronize = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    print(f"model: {sum(p.numel() for p in module.parameters()) / 1e6:.1f}M parameters")
    for parameter in module.parameters():
        parameter.grad = torch.randn_like(parameter) * 1e-3
    optimizers = {
        kernel: module.build_optimizer(
            list(module.model.named_parameters()),
            learning_rate=1e-5,
            weight_decay=0.01,
            betas=(0.9, 0.999),
            warmup_steps=0,
            lr_schedule="constant",
            min_lr_ratio=0.0,
            total_steps=10**9,
            implementation=kernel,
        )[0]
        for kernel in KERNELS
    }
    times: dict[str, list[float]] = {kernel: [] for kernel in KERNELS}
    for _ in range(args.rounds):
        for kernel, optimizer in optimizers.items():
            optimizer.step()  # warm-up (and the optimizer state, on the first round)
            synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                optimizer.step()
            synchronize()
            times[kernel].append((time.perf_counter() - start) / args.steps * 1000)
    print_step_medians(times, digits=2)


if __name__ == "__main__":
    main()
