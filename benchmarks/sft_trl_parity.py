"""Does lit_rlhf's SFT train exactly as TRL's ``SFTTrainer``? Compares the two systems step by step on identical
batches, from the same start weights (the setup of ``benchmarks/sft_arithmetic_trl.py``, whose TRL virtualenv this
uses).

    .venv/bin/python benchmarks/sft_trl_parity.py --threads 1                 # the checks below, 10 steps
    .venv/bin/python benchmarks/sft_trl_parity.py --probe-steps 40 --hf-warmup

What it compares:

1. The optimizer: which parameters get weight decay, and AdamW's settings (lr, betas, eps, kernel).
2. The LR schedule: the factor of every step.
3. The first batch (the first ``batch_size`` training rows): loss, supervised-token count and the gradient of every
   parameter, for lit_rlhf padded and padding-free.
4. ``--probe-steps`` real training steps over the training rows in file order (lit_rlhf through a Lightning
   ``Trainer`` as ``train.py fit`` builds it, TRL through ``trainer.train()``): loss, gradient norm (before clipping)
   and LR per step, then the distance between the two systems' weights. ``--hf-warmup`` gives lit_rlhf Hugging
   Face's warmup (the first step at LR 0, step ``s`` at ``s / warmup``) for this comparison only, so that whatever
   difference remains is float rounding.

The data order of a real run is the only difference left out: each system shuffles with its own sampler.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import use_threads  # noqa: E402
from benchmarks.sft_arithmetic_trl import (  # noqa: E402
    DEFAULT_TRL_PYTHON,
    SETUP,
    config_settings,
    save_fresh_model,
    trl_command,
    write_rows,
)


def hf_warmup_factor(step: int, warmup_steps: int, total_steps: int, schedule: str, min_factor: float) -> float:
    """Hugging Face's ``cosine_with_min_lr`` factor: step ``s`` of warmup at ``s / warmup`` (0 at the first step)."""
    from lit_rlhf.functional.schedules import warmup_decay_factor

    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return warmup_decay_factor(step, warmup_steps, total_steps, schedule, min_factor)


def lit_module(model_dir: str, model_args: dict, padding_free: bool):
    from lit_rlhf.modules.sft import SFTModule

    keys = ("learning_rate", "weight_decay", "warmup_steps", "lr_schedule", "min_lr_ratio", "adamw_implementation")
    return SFTModule(
        model_name_or_path=model_dir,
        padding_free=padding_free,
        **{k: model_args[k] for k in keys if k in model_args},
    )


def lit_groups(module, total_steps: int) -> list[dict]:
    optimizer, _ = module.model_optimizer(total_steps)
    names = {id(p): n for n, p in module.model.named_parameters()}
    return [
        {"names": [names[id(p)] for p in g["params"]], **{k: v for k, v in g.items() if k != "params"}}
        for g in optimizer.param_groups
    ]


def first_batch(module, batch: dict) -> dict:
    module.model.train()
    module.model.zero_grad(set_to_none=True)
    loss, stats = module._batch_loss(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.model.named_parameters() if p.grad is not None}
    module.model.zero_grad(set_to_none=True)
    return {"loss": float(loss.detach()), "num_tokens": int(stats.num_tokens), "grads": grads}


def lit_steps(module, dataset, collate, s: dict, probe_steps: int, hf_warmup: bool) -> dict:
    """``probe_steps`` training steps of ``module`` on ``dataset`` in order, as ``train.py fit`` runs them."""
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, Subset

    import lit_rlhf.modules.base as base

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.logs: list[dict] = []

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
            self.logs.append({"lr": optimizer.param_groups[0]["lr"], "grad_norm": float(norm)})

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.logs[-1]["loss"] = float(outputs["loss"])
            if trainer.global_step >= probe_steps:
                trainer.should_stop = True

    rows = Subset(dataset, range(probe_steps * s["batch_size"]))
    loader = DataLoader(rows, batch_size=s["batch_size"], shuffle=False, collate_fn=collate)
    record = Record()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=s["steps"],
        gradient_clip_val=s["max_grad_norm"] or None,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[record],
    )
    original = base.warmup_decay_factor
    if hf_warmup:
        base.warmup_decay_factor = hf_warmup_factor
    try:
        trainer.fit(module, train_dataloaders=loader)
    finally:
        base.warmup_decay_factor = original
    weights = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    return {"logs": record.logs, "weights": weights, "steps": trainer.global_step}


def relative(a, b) -> float:
    import torch

    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp(min=1e-30))


def compare_groups(lit: list[dict], trl: list[dict]) -> list[str]:
    def summary(groups: list[dict]) -> dict:
        decayed = sorted(n for g in groups if g["weight_decay"] > 0 for n in g["names"])
        kept = sorted(n for g in groups if g["weight_decay"] == 0 for n in g["names"])
        keys = ("lr", "betas", "eps", "amsgrad", "maximize", "fused", "foreach", "capturable", "differentiable")
        settings = {k: [g.get(k) for g in groups] for k in keys}
        return {
            "decayed": decayed,
            "not_decayed": kept,
            "decay": sorted({g["weight_decay"] for g in groups}),
            **settings,
        }

    a, b = summary(lit), summary(trl)
    lines = []
    for key in a:
        same = a[key] == b[key]
        shown = f"{len(a[key])} parameters" if key in ("decayed", "not_decayed") and same else f"{a[key]}"
        lines.append(
            f"  {key}: {'same' if same else 'DIFFERS'}: lit_rlhf {shown}" + ("" if same else f", TRL {b[key]}")
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-python", default=DEFAULT_TRL_PYTHON, help="python of the TRL venv (see the setup)")
    parser.add_argument("--lit-config", default="configs/arithmetic/sft.yaml", help="lit_rlhf SFT config")
    parser.add_argument("--seed", type=int, default=None, help="start-model seed (default: the config's)")
    parser.add_argument("--probe-steps", type=int, default=10, help="training steps compared on rows in order")
    parser.add_argument("--hf-warmup", action="store_true", help="lit_rlhf with Hugging Face's warmup (see above)")
    parser.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per process")
    args = parser.parse_args()

    use_threads(args.threads)
    if not os.path.isfile(args.trl_python):
        sys.exit(f"{args.trl_python} not found; set up TRL's venv from the repository root:\n  {SETUP}")
    import torch

    from lit_rlhf.data.arithmetic import ArithmeticDataModule
    from lit_rlhf.functional.schedules import warmup_decay_factor
    from lit_rlhf.models.loading import load_tokenizer

    config, s = config_settings(args.lit_config, None)
    model_args, data_args = config["model"]["init_args"], config["data"]["init_args"]
    seed = s["seed"] if args.seed is None else args.seed
    with tempfile.TemporaryDirectory(prefix="sft_trl_parity_") as tmp:
        model_dir = os.path.join(tmp, "fresh_model")
        save_fresh_model(model_dir, seed)
        write_rows(tmp, model_dir, data_args)
        probe_path = os.path.join(tmp, "trl_probe.pt")
        command = trl_command(args.trl_python, s, tmp, model_dir, os.path.join(tmp, "unused.json"), seed, args.threads)
        command += ["--probe", probe_path, "--probe-steps", str(args.probe_steps)]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"TRL probe failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
        trl = torch.load(probe_path, weights_only=False)

        data = ArithmeticDataModule(
            format="sft", num_val=data_args["num_val"], seed=data_args.get("seed", 1234), max_length=s["max_length"]
        )
        data.connect(load_tokenizer(model_dir))
        data.setup("fit")
        collate = data._collator(validation=False)
        batch = collate([data.train_dataset[i] for i in range(s["batch_size"])])

        print(
            f"start model seed {seed}; {s['steps']} steps of batch {s['batch_size']}; "
            f"{torch.get_num_threads()} thread(s)"
        )
        same_rows = torch.equal(batch["input_ids"], trl["first_batch"]["input_ids"][:, : batch["input_ids"].size(1)])
        same_labels = torch.equal(batch["labels"], trl["first_batch"]["labels"][:, : batch["labels"].size(1)])
        print(
            f"first batch: same input ids {same_rows}, same labels {same_labels}; TRL batch keys "
            f"{trl['first_batch']['batch_keys']}"
        )

        module = lit_module(model_dir, model_args, padding_free=False)
        print("1. optimizer (lit_rlhf against TRL):")
        print("\n".join(compare_groups(lit_groups(module, s["steps"]), trl["groups"])))

        lit_factors = [
            warmup_decay_factor(step, s["warmup_steps"], s["steps"], s["lr_schedule"], s["min_lr_ratio"])
            for step in range(s["steps"] + 1)
        ]
        differ = [i for i, (a, b) in enumerate(zip(lit_factors, trl["lr_factors"])) if abs(a - b) > 1e-12]
        print(
            f"2. LR factor per step: {len(differ)} of {len(lit_factors)} steps differ"
            + (f" (steps {differ[0]}..{differ[-1]})" if differ else "")
        )
        for step in sorted(
            {0, 1, max(0, s["warmup_steps"] - 1), s["warmup_steps"], s["warmup_steps"] + 1, s["steps"] - 1}
        ):
            print(f"   step {step}: lit_rlhf {lit_factors[step]:.6f}, TRL {trl['lr_factors'][step]:.6f}")

        print(
            f"3. first batch: TRL loss {trl['first_batch']['loss']:.6f} over "
            f"{trl['first_batch']['num_items_in_batch']} tokens"
        )
        trl_grads = trl["first_batch"]["grads"]
        trl_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in trl_grads.values()]))
        for padding_free in (False, True):
            module = lit_module(model_dir, model_args, padding_free=padding_free)
            ours = first_batch(module, batch)
            worst = max(trl_grads, key=lambda n: relative(ours["grads"][n], trl_grads[n]))
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in ours["grads"].values()]))
            missing = sorted(set(trl_grads) ^ set(ours["grads"]))
            print(
                f"   lit_rlhf {'padding-free' if padding_free else 'padded'}: loss {ours['loss']:.6f} over "
                f"{ours['num_tokens']} tokens (diff {ours['loss'] - trl['first_batch']['loss']:+.2e}); gradient norm "
                f"{float(norm):.6f} (TRL {float(trl_norm):.6f}); largest relative gradient difference "
                f"{relative(ours['grads'][worst], trl_grads[worst]):.2e} ({worst})"
                + (f"; parameters with a gradient in one system only: {missing}" if missing else "")
            )

        if args.probe_steps:
            steps = trl["steps"]
            warm = "Hugging Face's warmup" if args.hf_warmup else "its own warmup"
            padding_free = bool(model_args.get("padding_free", False))
            path = "padding-free" if padding_free else "padded"
            print(f"4. {args.probe_steps} training steps on the rows in order (lit_rlhf {path} as configured, {warm}):")
            module = lit_module(model_dir, model_args, padding_free=padding_free)
            ours = lit_steps(module, data.train_dataset, collate, s, args.probe_steps, args.hf_warmup)
            trl_logs = [e for e in steps["logs"] if "loss" in e]
            print(
                "   step | loss lit_rlhf | loss TRL | grad norm lit_rlhf | grad norm TRL | LR lit_rlhf "
                "| LR TRL (logged)"
            )
            for i, (a, b) in enumerate(zip(ours["logs"], trl_logs)):
                print(
                    f"   {i + 1:4d} | {a['loss']:.6f} | {b['loss']:.6f} | {a['grad_norm']:.6f} | "
                    f"{b.get('grad_norm', float('nan')):.6f} | {a['lr']:.3e} "
                    f"| {b.get('learning_rate', float('nan')):.3e}"
                )
            total = relative(
                torch.cat([ours["weights"][n].flatten() for n in sorted(ours["weights"])]),
                torch.cat([steps["weights"][n].flatten() for n in sorted(ours["weights"])]),
            )
            start = start_weights(model_dir)
            moved = relative(
                torch.cat([steps["weights"][n].flatten() for n in sorted(ours["weights"])]),
                torch.cat([start[n].flatten() for n in sorted(ours["weights"])]),
            )
            print(
                f"   after {ours['steps']} (lit_rlhf) / {steps['steps']} (TRL) steps: weights differ by {total:.2e} "
                f"relative; TRL's weights moved {moved:.2e} relative from the start"
            )


def start_weights(model_dir: str) -> dict:
    from transformers import AutoModelForCausalLM

    return {n: p.detach() for n, p in AutoModelForCausalLM.from_pretrained(model_dir).named_parameters()}


if __name__ == "__main__":
    main()
