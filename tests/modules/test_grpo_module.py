import warnings

import lightning as L
import pytest
import torch

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.modules.grpo import GRPOModule
from lit_rlhf.rewards import ArithmeticVerifierReward
from lit_rlhf.rewards.rules import LengthReward

GRPO_METRICS = (
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "reward/arithmetic_verifier/mean",
    "reward/arithmetic_verifier/std",
    "reward/length/mean",
    "reward/length/std",
    "completions/mean_length",
    "completions/eos_rate",
    "kl",
    "policy/clipfrac",
    "policy/ratio",
    "policy/entropy",
    "loss/policy",
    "lr",
    "val/exact_match",
    "val/reward",
)


def make(tmp_path, policy_dir, iterations, **module_kwargs):
    L.seed_everything(0)
    options = {
        "rewards": [ArithmeticVerifierReward("graded_score"), LengthReward(ideal_length=10, unit="characters")],
        "reward_weights": [1.0, 0.01],
        "policy_name_or_path": policy_dir,
        "num_generations": 4,
        "max_new_tokens": 8,
        "num_iterations": 2,
        "num_minibatches": 2,
        "learning_rate": 1e-3,
        "beta": 0.1,
        **module_kwargs,
    }
    module = GRPOModule(**options)
    data = ArithmeticDataModule(format="prompt", num_train=64, num_val=16, batch_size=4)
    trainer = L.Trainer(
        max_steps=iterations,  # one training step per GRPO iteration
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=iterations,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    return module, data, trainer


def test_a_few_iterations_change_the_policy_and_not_the_reference(tmp_path, policy_dir):
    module, data, trainer = make(tmp_path, policy_dir, iterations=3)
    policy = {k: v.clone() for k, v in module.model.state_dict().items()}
    reference = {k: v.clone() for k, v in module.reference.state_dict().items()}
    trainer.fit(module, data)
    assert module.iteration == 3 and trainer.global_step == 3
    assert any(not torch.equal(v, policy[k]) for k, v in module.model.state_dict().items())
    assert all(torch.equal(v, reference[k]) for k, v in module.reference.state_dict().items())
    for name in GRPO_METRICS:
        assert name in trainer.callback_metrics, name
    assert trainer.callback_metrics["kl"] > 0  # the policy moved away from the reference
    assert not any("reference" in k for k in module.state_dict())


def test_beta_zero_loads_no_reference(tmp_path, policy_dir):
    module, data, trainer = make(tmp_path, policy_dir, iterations=1, beta=0.0, num_iterations=1, num_minibatches=1)
    with pytest.raises(RuntimeError, match="without a reference"):
        module.reference  # noqa: B018
    trainer.fit(module, data)
    assert trainer.callback_metrics["kl"] == 0.0
    # one pass, one minibatch: the samples' own policy, so the ratio is 1 and nothing is clipped
    assert trainer.callback_metrics["policy/ratio"] == pytest.approx(1.0, abs=1e-4)
    assert trainer.callback_metrics["policy/clipfrac"] == 0.0


class Recorder(L.Callback):
    def __init__(self):
        self.values = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.values[pl_module.iteration] = (metrics["loss/policy"].item(), metrics["reward"].item())


class TrainingState(L.Callback):
    """Per iteration: the learning rate it used and its KL to the reference; at the end, the optimizer's rates."""

    def __init__(self):
        self.values, self.final_lrs = {}, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        metrics = trainer.callback_metrics
        self.values[pl_module.iteration] = (float(metrics["lr"]), float(metrics["kl"]))

    def on_train_end(self, trainer, pl_module):
        self.final_lrs = [[group["lr"] for group in opt.param_groups] for opt in trainer.optimizers]


def test_resume_continues_the_same_run(tmp_path, policy_dir):
    from lightning.pytorch.callbacks import ModelCheckpoint

    # A schedule that changes every iteration (warmup, then linear decay): a resume that restarted it would use
    # other rates after the checkpoint.
    options = {"warmup_steps": 1, "lr_schedule": "linear", "min_lr_ratio": 0.1}
    runs = []
    for name, ckpt_path in (("a", None), ("b", str(tmp_path / "ckpt" / "step=2.ckpt"))):
        recorder, state = Recorder(), TrainingState()
        module, data, trainer = make(tmp_path / name, policy_dir, iterations=4, **options)
        trainer.callbacks += [recorder, state]
        if ckpt_path is None:
            trainer.callbacks.append(
                ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
            )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(module, data, ckpt_path=ckpt_path)
        # Lightning's advice to checkpoint the weights from before the step does not apply: everything is after it.
        assert not [w for w in caught if "manual optimization and every_n_train_steps" in str(w.message)]
        runs.append((recorder, state))
    (full, full_state), (resumed, resumed_state) = runs
    assert sorted(resumed.values) == sorted(resumed_state.values) == [3, 4]
    for iteration, (loss, reward) in resumed.values.items():
        assert loss == pytest.approx(full.values[iteration][0], abs=1e-6), iteration
        assert reward == pytest.approx(full.values[iteration][1], abs=1e-6), iteration
        lr, kl = resumed_state.values[iteration]
        assert lr == full_state.values[iteration][0], iteration  # exactly the uninterrupted run's rate
        assert kl == pytest.approx(full_state.values[iteration][1], abs=1e-7), iteration
    assert resumed_state.final_lrs == full_state.final_lrs
    # Not trivially equal: every iteration used another rate, and the policy moved away from the reference.
    assert len({full_state.values[i][0] for i in range(1, 5)}) == 4
    assert all(full_state.values[i][1] > 0 for i in (3, 4))


@pytest.mark.parametrize("averaging", ["token", "sequence"])
def test_gradient_accumulation_gives_the_same_update(tmp_path, policy_dir, averaging):
    weights = []
    for steps in (1, 2):
        module, data, trainer = make(
            tmp_path / str(steps), policy_dir, iterations=1, gradient_accumulation_steps=steps, loss_averaging=averaging
        )
        trainer.fit(module, data)
        weights.append({k: v.clone() for k, v in module.model.state_dict().items()})
    for name, value in weights[0].items():
        assert torch.allclose(value, weights[1][name], atol=1e-5), name


@pytest.mark.parametrize(
    ("option", "group_minibatches"),
    [
        (("shared_prompt_forward",), False),
        (("shared_prompt_forward",), True),
        (("padding_free",), False),
        (("shared_prompt_forward", "padding_free"), True),
    ],
)
def test_shared_prompt_forward_and_padding_free_give_the_same_update(tmp_path, policy_dir, option, group_minibatches):
    # The reference pass (beta 0.1) and the policy's micro-batches compute each prompt once, or run packed; the same
    # samples, losses and weights as the padded full rows. Micro-batches (2 per minibatch) hold some groups in part.
    weights, losses = [], []
    for shared in (False, True):
        module, data, trainer = make(
            tmp_path / str(shared),
            policy_dir,
            iterations=2,
            group_minibatches=group_minibatches,
            **dict.fromkeys(option, shared),
            gradient_accumulation_steps=2,
        )
        recorder = Recorder()
        trainer.callbacks.append(recorder)
        trainer.fit(module, data)
        weights.append({k: v.clone() for k, v in module.model.state_dict().items()})
        losses.append(recorder.values)
    assert losses[0].keys() == losses[1].keys() == {1, 2}
    for iteration, (loss, reward) in losses[0].items():
        assert losses[1][iteration] == pytest.approx((loss, reward), abs=1e-5), iteration
    for name, value in weights[0].items():
        assert torch.allclose(value, weights[1][name], atol=1e-5), name


def test_group_minibatches_hold_whole_groups(policy_dir):
    module = GRPOModule([ArithmeticVerifierReward()], policy_name_or_path=policy_dir, num_generations=4)
    module.hparams.num_minibatches = 3
    torch.manual_seed(0)
    module.hparams.group_minibatches = True
    minibatches = module._minibatches(6 * 4)  # 6 groups of 4 responses, in 3 minibatches
    assert [len(m) for m in minibatches] == [8, 8, 8]
    assert sorted(torch.cat(minibatches).tolist()) == list(range(24))
    for m in minibatches:
        groups = (m // 4).tolist()
        assert all(groups.count(group) == 4 for group in groups)  # every group whole
    # 2 groups in 3 minibatches: still 3 steps, each group's rows adjacent (one group straddles two minibatches)
    few = module._minibatches(2 * 4)
    assert [len(m) for m in few] == [3, 3, 2] and sorted(torch.cat(few).tolist()) == list(range(8))
    assert sorted(torch.cat(few)[:4].tolist()) in ([0, 1, 2, 3], [4, 5, 6, 7])
    module.hparams.group_minibatches = False
    mixed = module._minibatches(6 * 4)
    assert sorted(torch.cat(mixed).tolist()) == list(range(24))
    assert any(len({int(i) // 4 for i in m}) > 2 for m in mixed)  # responses shuffled across groups


def test_bad_options_are_refused(policy_dir):
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        GRPOModule([ArithmeticVerifierReward()], policy_name_or_path=policy_dir, num_generations=1)
    with pytest.raises(ValueError, match="loss_averaging"):
        GRPOModule([ArithmeticVerifierReward()], policy_name_or_path=policy_dir, loss_averaging="batch")
