"""PPO on one global batch, in one process or split over two (CPU, gloo), for ``test_ddp_equivalence.py``.

``python ddp_equivalence_run.py <policy_dir> <out_dir> <devices> [<strategy>] [lora]`` trains 2 iterations on the
16 prompts of a data set that is exactly one global batch (16 prompts on one device, 8 on each of two ranks), and rank
``r`` writes ``<out_dir>/rank<r>.pt``: the gradient each optimizer step applied (averaged over ranks and clipped), the
final actor and critic weights and the KL coefficient. With ``lora`` actor and critic train LoRA adapters (rank 4 on
every linear layer; the critic's value head in full) and the reference is the policy with its adapters off.
Lightning's DDP launcher starts rank 1 by re-running this script, so it is a standalone file.

Sampling is replaced by fixed responses that depend only on the prompt and the iteration (every response is 5 words
then EOS), so both layouts train on the same samples whichever rank holds a prompt, and every rank holds the same
number of response tokens: the mean of the ranks' token means is then the token mean of the global batch.
"""

import os
import sys

import lightning as L
import torch
from peft import LoraConfig

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.generation import Generation
from lit_rlhf.modules import PPOModule, engine_sampling
from lit_rlhf.rewards import FunctionReward
from lit_rlhf.rollout import response_logprobs
from lit_rlhf.sharding import full_tensor
from tests.modules.wiring import digit_fraction

GLOBAL_BATCH = 16
RESPONSE_WORDS = 5


class PromptKeyedSampler:
    """Stands in for ``generate``: each prompt's response is drawn from a generator seeded by its real tokens and
    the iteration, so it does not depend on the batch it is in; log-probabilities from a teacher-forced pass."""

    def __init__(self, module: PPOModule) -> None:
        self.module = module

    def __call__(self, model, prompt_ids, prompt_mask, **kwargs) -> Generation:
        tokenizer = self.module.tokenizer
        rows = []
        for ids, mask in zip(prompt_ids.tolist(), prompt_mask.bool().tolist()):
            real = [t for t, keep in zip(ids, mask) if keep]
            seed = sum((i + 1) * t for i, t in enumerate(real)) + 100_003 * self.module.iteration
            words = torch.randint(4, len(tokenizer), (RESPONSE_WORDS,), generator=torch.Generator().manual_seed(seed))
            rows.append(torch.cat([words, torch.tensor([tokenizer.eos_token_id])]))
        response_ids = torch.stack(rows).to(prompt_ids.device)
        response_mask = torch.ones_like(response_ids, dtype=torch.bool)
        has_eos = torch.ones(len(rows), dtype=torch.bool, device=prompt_ids.device)
        logprobs = response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask, kwargs["temperature"])
        return Generation(response_ids, response_mask, has_eos, logprobs.detach())


class Record(L.Callback):
    """The gradient of every optimizer step (as the optimizer sees it) and, at the end, the weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.gradients: list[tuple[str, torch.Tensor]] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        name = "actor" if any(params[0] is p for p in pl_module.model.parameters()) else "critic"
        grads = [full_tensor(p.grad) if p.grad is not None else torch.zeros_like(full_tensor(p)) for p in params]
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        self.gradients.append((name, flat.detach().clone()))

    def on_train_end(self, trainer, pl_module):
        torch.save(
            {
                "world_size": trainer.world_size,
                "iteration": pl_module.iteration,
                "gradients": self.gradients,
                "actor": whole_state(pl_module.model),
                "critic": whole_state(pl_module.critic),
                "kl_coef": pl_module.kl_controller.value,
            },
            os.path.join(self.out_dir, f"rank{trainer.global_rank}.pt"),
        )


def whole_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every full tensor of ``model``'s state (gathered from the shards under FSDP2, on every rank)."""
    return {k: full_tensor(v).detach().clone() for k, v in model.state_dict().items()}


def lora_config() -> LoraConfig:
    """The LoRA adapters of the ``lora`` variant: rank 4 on every linear layer, no dropout."""
    return LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")


def main(policy_dir: str, out_dir: str, devices: str, strategy: str = "ddp", variant: str = "full") -> None:
    torch.set_num_threads(1)
    devices = int(devices)
    L.seed_everything(0)
    module = PPOModule(
        FunctionReward(digit_fraction),
        policy_name_or_path=policy_dir,
        max_new_tokens=RESPONSE_WORDS + 1,
        ppo_epochs=2,
        num_minibatches=1,
        actor_learning_rate=1e-3,
        critic_learning_rate=1e-3,
        kl_coef=0.1,
        kl_estimator="k3",
        adaptive_kl_target=0.5,
        max_grad_norm=1e3,  # no clipping: a clipped gradient would hide a sum of the ranks' gradients
        warmup_steps=1,
        lr_schedule="linear",
        peft_config=lora_config() if variant == "lora" else None,
    )
    # A policy away from its reference (non-zero KL; under LoRA the adapters move off zero) and a critic with a
    # non-zero head.
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for param in module.model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
        module.critic.score.weight.normal_(std=0.1, generator=generator)
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
        callbacks=[Record(out_dir)],
    )
    trainer.fit(module, data)


if __name__ == "__main__":
    main(*sys.argv[1:])
