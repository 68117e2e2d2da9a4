"""CPU (gloo) GRPO runs for ``test_grpo_ddp.py``.

``python ddp_grpo_run.py <policy_dir> <out_dir> [<strategy>]`` trains 2 processes under ``strategy`` (``ddp`` or
``fsdp2``) with the real sampler; each rank writes what it ended with to ``<out_dir>/rank<r>.json``.

``python ddp_grpo_run.py <policy_dir> <out_dir> <strategy> <devices> same-global-batch [lora]`` trains 2 iterations on
the 8 prompts of a data set that is exactly one global batch (8 prompts on one device, 4 on each of two ranks), with
sampling replaced by fixed responses that depend only on the prompt, the sample's place in its group and the
iteration (every response is 5 words then EOS): both layouts then train on the same samples, and every rank holds
as many response tokens, so the mean of the ranks' token means is the global batch's. Rank ``r`` writes
``<out_dir>/rank<r>.pt``: the gradient of every optimizer step and the final policy weights. With ``lora`` the policy
trains LoRA adapters (rank 4 on every linear layer) and the reference is the policy with its adapters off.

Lightning's launcher starts rank 1 by re-running this script, so it must be a standalone file.
"""

import json
import os
import sys

import lightning as L
import torch
from peft import LoraConfig

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.generation import Generation
from lit_rlhf.modules import GRPOModule, engine_sampling
from lit_rlhf.rewards import ArithmeticVerifierReward, LengthReward
from lit_rlhf.rollout import response_logprobs
from lit_rlhf.sharding import full_tensor

GLOBAL_BATCH = 8
RESPONSE_WORDS = 5


class Record(L.Callback):
    """Per rank: the mean reward of each generation batch (its own prompts) and what it ended with."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.local_rewards: list[float] = []

    def on_train_start(self, trainer, pl_module):
        score = pl_module.score

        def recording(rows, completions, finished):
            rewards, stats = score(rows, completions, finished)
            if trainer.training:  # generation batches only, not validation
                self.local_rewards.append(float(rewards.mean()))
            return rewards, stats

        pl_module.score = recording

    def on_train_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        digest = float(sum(full_tensor(p).double().sum() for p in pl_module.model.parameters()))
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(
                {
                    "world_size": trainer.world_size,
                    "metrics": metrics,
                    "weights": digest,
                    "local_rewards": self.local_rewards,
                    "iteration": pl_module.iteration,
                },
                f,
            )


def main(policy_dir: str, out_dir: str, strategy: str = "ddp") -> None:
    torch.set_num_threads(1)
    L.seed_everything(0)
    module = GRPOModule(
        [ArithmeticVerifierReward("graded_score"), LengthReward(ideal_length=10, unit="characters", scale=0.1)],
        policy_name_or_path=policy_dir,
        num_generations=4,
        max_new_tokens=8,
        num_minibatches=2,
        gradient_accumulation_steps=2,
        group_minibatches=True,  # the shipped configs' options: each prompt computed once, whole groups per step
        shared_prompt_forward=True,
        learning_rate=1e-3,
        beta=0.1,
    )
    data = ArithmeticDataModule(format="prompt", num_train=64, num_val=16, batch_size=4, eval_batch_size=8)
    trainer = L.Trainer(
        strategy=strategy,
        accelerator="cpu",
        devices=2,
        max_steps=3,  # iterations
        val_check_interval=3,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        default_root_dir=out_dir,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record(out_dir)],
    )
    trainer.fit(module, data)


class PromptKeyedSampler:
    """Stands in for ``generate``: sample ``j`` of a prompt's group is drawn from a generator seeded by the prompt's
    real tokens, ``j`` and the iteration, so it does not depend on the batch or rank it is in; log-probabilities from
    a teacher-forced pass."""

    def __init__(self, module: GRPOModule) -> None:
        self.module = module

    def __call__(self, model, prompt_ids, prompt_mask, *, num_samples, temperature, **kwargs) -> Generation:
        tokenizer = self.module.tokenizer
        rows = []
        for ids, mask in zip(prompt_ids.tolist(), prompt_mask.bool().tolist()):
            real = [t for t, keep in zip(ids, mask) if keep]
            for sample in range(num_samples):
                seed = sum((i + 1) * t for i, t in enumerate(real)) + 1009 * sample + 100_003 * self.module.iteration
                generator = torch.Generator().manual_seed(seed)
                words = torch.randint(4, len(tokenizer), (RESPONSE_WORDS,), generator=generator)
                rows.append(torch.cat([words, torch.tensor([tokenizer.eos_token_id])]))
        response_ids = torch.stack(rows).to(prompt_ids.device)
        response_mask = torch.ones_like(response_ids, dtype=torch.bool)
        has_eos = torch.ones(len(rows), dtype=torch.bool, device=prompt_ids.device)
        prompts = prompt_ids.repeat_interleave(num_samples, dim=0)
        masks = prompt_mask.repeat_interleave(num_samples, dim=0)
        logprobs = response_logprobs(model, prompts, masks, response_ids, response_mask, temperature)
        return Generation(response_ids, response_mask, has_eos, logprobs.detach())


class RecordSteps(L.Callback):
    """The gradient of every optimizer step (as the optimizer sees it, gathered from the shards under FSDP2) and, at
    the end, the whole policy and the logged metrics."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.gradients: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grads = [full_tensor(p.grad) if p.grad is not None else torch.zeros_like(full_tensor(p)) for p in params]
        self.gradients.append(torch.cat([grad.reshape(-1) for grad in grads]).detach().clone())

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "world_size": trainer.world_size,
                "iteration": pl_module.iteration,
                "gradients": self.gradients,
                "policy": {k: full_tensor(v).detach().clone() for k, v in pl_module.model.state_dict().items()},
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            },
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )


def same_global_batch(policy_dir: str, out_dir: str, strategy: str, devices: str, variant: str = "full") -> None:
    """2 GRPO iterations on one global batch of ``GLOBAL_BATCH`` prompts over ``devices`` processes; ``variant``
    ``lora`` trains LoRA adapters (rank 4, every linear layer) instead of every weight."""
    torch.set_num_threads(1)
    devices = int(devices)
    L.seed_everything(0)
    module = GRPOModule(
        [ArithmeticVerifierReward("graded_score"), LengthReward(ideal_length=10, unit="characters", scale=0.1)],
        policy_name_or_path=policy_dir,
        num_generations=4,
        max_new_tokens=RESPONSE_WORDS + 1,
        num_iterations=2,  # the second pass has ratios away from 1
        num_minibatches=1,  # a minibatch of several would be a random draw of each rank's own groups
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        beta=0.1,
        max_grad_norm=1e3,  # no clipping: a clipped gradient would hide a sum of the ranks' gradients
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear") if variant == "lora" else None,
    )
    # A policy away from its reference: a non-zero KL term from the first update (under LoRA the adapters move off
    # zero, so the policy differs from the base model the reference is).
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for param in module.model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    engine_sampling.generate = PromptKeyedSampler(module)
    data = ArithmeticDataModule(
        format="prompt", num_train=GLOBAL_BATCH, num_val=8, batch_size=GLOBAL_BATCH // devices, eval_batch_size=8
    )
    trainer = L.Trainer(
        strategy=strategy if devices > 1 else "auto",
        accelerator="cpu",
        devices=devices,
        max_steps=2,  # iterations, each over the whole data set
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=out_dir,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordSteps(out_dir)],
    )
    trainer.fit(module, data)


if __name__ == "__main__":
    if sys.argv[5:6] == ["same-global-batch"]:
        same_global_batch(*sys.argv[1:5], *sys.argv[6:7])
    else:
        main(*sys.argv[1:])
