"""SFT step time with ``SFTModule(length_chunks=k)`` on real arithmetic batches: k passes over rows of similar length,
and with ``SFTModule(padding_free=True)``: one pass over the real tokens packed into one row.

    .venv/bin/python benchmarks/sft_length_chunks.py                       # k = 1, 2, 3; 5 rounds of 30 batches
    .venv/bin/python benchmarks/sft_length_chunks.py --chunks 1 2 --rounds 9
    .venv/bin/python benchmarks/sft_length_chunks.py --chunks 1 2 packed   # padding_free as a third setting
    .venv/bin/python benchmarks/sft_length_chunks.py --chunks 1 packed_all_logits packed \
        --model-config '{"vocab_size": 49152}'     # the LM head over every packed position, and only where needed
    .venv/bin/python benchmarks/sft_length_chunks.py --chunks 1_all_logits 1 --model-config '{"vocab_size": 49152}'
    python benchmarks/sft_length_chunks.py --device cuda --bf16 --chunks 1 packed_all_logits packed --model-config ...

Builds ``configs/arithmetic/sft.yaml``'s model (a fresh ``tiny-arithmetic`` Llama) and data (batch 64), takes the
first ``--batches`` training batches, and times forward + backward + AdamW step per batch for each ``k``, the
settings alternating round by round so that drifts of the machine's speed hit all of them alike. Prints the share
of pad positions each ``k`` leaves and the median milliseconds per step, with each ``k``'s speed-up over ``k = 1``
(ratio of medians). Only the training step is timed: data loading, logging and validation are not.
``packed`` computes the LM head only where a response token is predicted (``logits_to_keep``);
``packed_all_logits`` is the same packed pass with the LM head over every position; likewise ``1`` (padded) computes
it from the position before the batch's first response token on, and ``1_all_logits`` over every position.
``--model-config`` overrides the model's ``LlamaConfig`` fields (e.g. a real tokenizer's vocabulary size, or another
shape); ``--adamw-implementation`` picks the optimizer's kernel.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import print_machine, print_step_medians, read_config, use_threads  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/arithmetic/sft.yaml")
    parser.add_argument(
        "--chunks",
        nargs="+",
        default=["1", "2", "3"],
        help="length_chunks settings; 'packed' = padding_free; a suffix '_all_logits' = the LM head everywhere",
    )
    parser.add_argument("--model-config", type=json.loads, default=None, help="JSON of LlamaConfig overrides")
    parser.add_argument("--adamw-implementation", default=None, choices=["for_loop", "foreach", "fused"])
    parser.add_argument("--batches", type=int, default=30, help="training batches timed per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; each times every setting once")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (timed with torch.cuda.synchronize())")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as trainer.precision bf16-mixed does")
    args = parser.parse_args()
    use_threads(args.threads)
    import lightning as L
    import torch

    import lit_rlhf.modules.sft as sft_module
    import lit_rlhf.rollout as rollout
    from lit_rlhf.data import ArithmeticDataModule
    from lit_rlhf.functional.padding import length_chunks
    from lit_rlhf.modules import SFTModule
    from lit_rlhf.modules.base import adamw_flags

    print_machine()
    config = read_config(args.config)
    L.seed_everything(config.get("seed_everything", 0))
    module = SFTModule(
        model_name_or_path=config["model"]["init_args"]["model_name_or_path"], model_config=args.model_config
    )
    parameters = sum(p.numel() for p in module.parameters())
    print(f"model: {parameters / 1e6:.1f}M parameters, vocabulary {module.model.config.vocab_size}")
    data = ArithmeticDataModule(**config["data"]["init_args"])
    data.connect(module.tokenizer)
    data.setup("fit")
    loader = iter(data.train_dataloader())
    batches = [
        {k: v.to(args.device) if isinstance(v, torch.Tensor) else v for k, v in next(loader).items()}
        for _ in range(args.batches)
    ]
    module.to(args.device)
    synchronize = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5, **adamw_flags(args.adamw_implementation))
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    print(f"{len(batches)} batches of {batches[0]['input_ids'].size(0)} rows, {real} real token positions")
    packed = ("packed", "packed_all_logits")
    settings = args.chunks
    chunks = {k: 1 if k in packed else int(k.removesuffix("_all_logits")) for k in settings}
    keeps_logits = rollout.takes_logits_to_keep

    def name(k: str) -> str:
        base = "padding_free" if k in packed else f"length_chunks={chunks[k]}"
        return f"{base}, LM head everywhere" if k.endswith("_all_logits") else base

    for k in settings:
        if k in packed:
            print(f"{name(k)}: {real} positions computed, 0.0% of them padding")
            continue
        cost = sum(len(r) * w for b in batches for r, w in length_chunks(b["attention_mask"].sum(dim=1), chunks[k]))
        print(f"{name(k)}: {cost} positions computed, {1 - real / cost:.1%} of them padding")

    def step(batch: dict) -> None:
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16):
            loss, _ = module._batch_loss(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    times: dict[str, list[float]] = {k: [] for k in settings}
    for _ in range(args.rounds):
        for k in settings:
            module.hparams.padding_free = k in packed
            module.hparams.length_chunks = chunks[k]
            keeps = (lambda model: False) if k.endswith("_all_logits") else keeps_logits
            rollout.takes_logits_to_keep = sft_module.takes_logits_to_keep = keeps
            step(batches[0])  # warm-up
            synchronize()
            start = time.perf_counter()
            for batch in batches:
                step(batch)
            synchronize()
            times[k].append((time.perf_counter() - start) / len(batches) * 1000)
    print_step_medians({name(k): times[k] for k in settings})


if __name__ == "__main__":
    main()
