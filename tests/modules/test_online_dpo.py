"""OnlineDPOModule on tiny models: rounds train the policy and not the reference, a round's pairs and loss are the
functional ones applied by hand, a toy reward rises, resume is exact, and bad options are refused."""

import warnings

import lightning as L
import pytest
import torch

import lit_rlhf.modules.online_dpo as online_dpo
from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.dpo import dpo_loss, sequence_logps
from lit_rlhf.functional.dpo_pairs import preference_pairs
from lit_rlhf.modules import OnlineDPOModule, engine_sampling
from lit_rlhf.rewards import ArithmeticVerifierReward, FunctionReward
from lit_rlhf.rewards.rules import LengthReward
from lit_rlhf.rollout import response_logprobs
from tests.helpers import quiet_trainer
from tests.modules.wiring import FixedSampler, ScoreHistory, decoded, digit_fraction, mean, perturb

ROUND_METRICS = (
    "reward",
    "reward_chosen",
    "reward_rejected",
    "frac_no_pair",
    "num_pairs",
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
    "lr",
    "completions/mean_length",
    "completions/eos_rate",
    "reward/arithmetic_verifier/mean",
    "reward/length/mean",
    "val/exact_match",
    "val/reward",
)


def make(tmp_path, policy_dir, rounds, **module_kwargs):
    L.seed_everything(0)
    options = {
        "rewards": [ArithmeticVerifierReward("graded_score"), LengthReward(ideal_length=10, unit="characters")],
        "reward_weights": [1.0, 0.01],
        "policy_name_or_path": policy_dir,
        "samples_per_prompt": 4,
        "max_new_tokens": 8,
        "num_epochs": 2,
        "num_minibatches": 2,
        "learning_rate": 1e-3,
        "beta": 0.1,
        **module_kwargs,
    }
    module = OnlineDPOModule(**options)
    data = ArithmeticDataModule(format="prompt", num_train=64, num_val=8, batch_size=4)
    trainer = L.Trainer(
        max_steps=rounds,  # one training step per round
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=rounds,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    return module, data, trainer


def test_rounds_train_the_policy_and_not_the_reference(tmp_path, policy_dir):
    module, data, trainer = make(tmp_path, policy_dir, rounds=2, pair_rule="all_pairs")
    policy = {k: v.clone() for k, v in module.model.state_dict().items()}
    reference = {k: v.clone() for k, v in module.reference.state_dict().items()}
    trainer.fit(module, data)
    assert module.iteration == 2 and trainer.global_step == 2
    assert any(not torch.equal(v, policy[k]) for k, v in module.model.state_dict().items())
    assert all(torch.equal(v, reference[k]) for k, v in module.reference.state_dict().items())
    metrics = trainer.callback_metrics
    for name in ROUND_METRICS:
        assert name in metrics, name
    assert metrics["reward_chosen"] > metrics["reward_rejected"]  # by construction of the pairs
    assert 0 < metrics["num_pairs"] <= 4 * 6 and 0 <= metrics["frac_no_pair"] <= 1
    assert not any("reference" in k for k in module.state_dict())


def test_simpo_loads_no_reference(tmp_path, policy_dir):
    module, data, trainer = make(tmp_path, policy_dir, rounds=1, loss_type="simpo", num_epochs=1)
    with pytest.raises(RuntimeError, match="without a reference"):
        module.reference  # noqa: B018
    trainer.fit(module, data)
    assert "rewards/margins" in trainer.callback_metrics


def make_round_module(policy_dir, **kwargs):
    """A module whose policy differs from its reference (perturbed weights), with a fixed prompt batch."""
    options = {"policy_name_or_path": policy_dir, "samples_per_prompt": 4, "max_new_tokens": 5, "beta": 0.2, **kwargs}
    module = OnlineDPOModule([FunctionReward(digit_fraction)], **options)
    perturb(module.model, std=0.05, seed=1)
    module.trainer = quiet_trainer(None, max_steps=1)
    data = ArithmeticDataModule(format="prompt", num_train=16, num_val=8, batch_size=6)
    data.connect(module.tokenizer)
    data.setup("fit")
    return module, next(iter(data.train_dataloader()))


@pytest.mark.parametrize("rule", ["best_vs_worst", "all_pairs"])
def test_a_round_pairs_the_scored_answers_and_takes_the_functional_loss(policy_dir, monkeypatch, rule):
    module, batch = make_round_module(policy_dir, pair_rule=rule)
    k = module.hparams.samples_per_prompt
    sampler = FixedSampler(module.tokenizer, length=5)
    monkeypatch.setattr(engine_sampling, "generate", sampler)
    answers, chosen, rejected, sums = module.sample_round(batch)

    (call,) = sampler.calls
    assert call["do_sample"] is True and call["num_samples"] == k
    ids, mask = sampler.generation.response_ids, sampler.generation.response_mask
    rewards = torch.tensor(digit_fraction(None, decoded(module.tokenizer, ids, mask), None))
    expected = preference_pairs(rewards.view(-1, k), rule)
    assert torch.equal(chosen, expected.chosen) and torch.equal(rejected, expected.rejected)
    assert len(chosen) > 0 and not expected.has_pair.all()  # some prompts pair, some do not
    assert float(sums["no_pair"]) == float((~expected.has_pair).sum())
    assert float(sums["reward_chosen_sum"]) == pytest.approx(float(rewards[chosen].sum()), abs=1e-6)

    prompt_ids = batch["prompt_input_ids"].repeat_interleave(k, dim=0)
    prompt_mask = batch["prompt_attention_mask"].repeat_interleave(k, dim=0)
    ref = sequence_logps(response_logprobs(module.reference, prompt_ids, prompt_mask, ids, mask), mask)[0]
    assert torch.allclose(answers.ref_logps[chosen], ref[chosen], atol=1e-5)
    assert torch.allclose(answers.ref_logps[rejected], ref[rejected], atol=1e-5)

    # The loss of the pairs: the policy's summed log-probabilities (temperature 1), DPO against the reference.
    logps, lengths = sequence_logps(response_logprobs(module.model, prompt_ids, prompt_mask, ids, mask), mask)
    loss_expected, stats = dpo_loss(logps[chosen], logps[rejected], ref[chosen], ref[rejected], beta=0.2)
    update_sums = dict.fromkeys(("pairs_seen", *online_dpo._DPO_STATS, *online_dpo._LOGP_STATS), 0.0)
    loss, _ = module._loss(answers, chosen, rejected, update_sums)
    assert float(loss) == pytest.approx(float(loss_expected), abs=1e-5)
    assert float(loss_expected) != pytest.approx(float(torch.log(torch.tensor(2.0))), abs=1e-4)  # policy != ref
    assert update_sums["rewards/margins"] == pytest.approx(float(stats.margin) * len(chosen), abs=1e-5)
    assert update_sums["pairs_seen"] == len(chosen)


def test_online_dpo_raises_the_reward_of_a_task_with_an_obvious_optimum(tmp_path, policy_dir):
    # Reward: the share of digits among the answer's words (about 0.08 for the untrained policy, 1 at best).
    L.seed_everything(0)
    module = OnlineDPOModule(
        [FunctionReward(digit_fraction)],
        policy_name_or_path=policy_dir,
        samples_per_prompt=4,
        max_new_tokens=6,
        pair_rule="all_pairs",
        num_epochs=2,
        num_minibatches=2,
        learning_rate=1e-2,
        beta=0.1,
    )
    data = ArithmeticDataModule(format="prompt", num_train=256, num_val=16, batch_size=8)
    history = ScoreHistory("reward", "rewards/accuracies")
    trainer = quiet_trainer(tmp_path, max_steps=10, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[history])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # answers cut at max_new_tokens
        trainer.fit(module, data)
    rewards = history.values["reward"]
    assert mean(rewards[-3:]) > mean(rewards[:3]) + 0.3, rewards


class Recorder(L.Callback):
    """Per round: its loss, reward, learning rate and pair count; at the end, the optimizer's rates."""

    def __init__(self):
        self.values, self.final_lrs = {}, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        m = trainer.callback_metrics
        self.values[pl_module.iteration] = tuple(float(m[k]) for k in ("loss", "reward", "lr", "num_pairs"))

    def on_train_end(self, trainer, pl_module):
        self.final_lrs = [[group["lr"] for group in opt.param_groups] for opt in trainer.optimizers]


def test_resume_between_rounds_continues_the_same_run(tmp_path, policy_dir):
    from lightning.pytorch.callbacks import ModelCheckpoint

    options = {"warmup_steps": 1, "lr_schedule": "linear", "min_lr_ratio": 0.1, "pair_rule": "all_pairs"}
    runs, weights = [], []
    for name, ckpt_path in (("a", None), ("b", str(tmp_path / "ckpt" / "step=2.ckpt"))):
        recorder = Recorder()
        module, data, trainer = make(tmp_path / name, policy_dir, rounds=4, **options)
        trainer.callbacks.append(recorder)
        if ckpt_path is None:
            trainer.callbacks.append(
                ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
            )
        trainer.fit(module, data, ckpt_path=ckpt_path)
        runs.append(recorder)
        weights.append({k: v.clone() for k, v in module.model.state_dict().items()})
    full, resumed = runs
    assert sorted(resumed.values) == [3, 4]
    for round_, values in resumed.values.items():
        assert values == pytest.approx(full.values[round_], abs=1e-6), round_
        assert values[2] == full.values[round_][2]  # exactly the uninterrupted run's rate
    assert resumed.final_lrs == full.final_lrs
    assert len({full.values[i][2] for i in range(1, 5)}) == 4  # every round used another rate
    for key, value in weights[0].items():
        assert torch.allclose(value, weights[1][key], atol=1e-6), key


def test_bad_options_are_refused(tmp_path, policy_dir):
    rewards = [ArithmeticVerifierReward()]
    for options, match in (
        ({"samples_per_prompt": 1}, "samples_per_prompt must be >= 2"),
        ({"pair_rule": "random"}, "pair_rule must be one of best_vs_worst, all_pairs"),
        ({"beta": 0.0}, "beta must be > 0"),
        ({"loss_type": "kto"}, "loss_type must be one of"),
        ({"label_smoothing": 0.5}, r"label_smoothing must be in \[0, 0.5\)"),
        ({"label_smoothing": 0.1, "loss_type": "hinge"}, "loss_type hinge does not read it"),
        ({"num_epochs": 0}, "num_epochs must be >= 1"),
        ({"reward_weights": [1.0, 2.0]}, "reward_weights must be a list of 1 weights"),
    ):
        with pytest.raises(ConfigError, match=match):
            OnlineDPOModule(rewards, policy_name_or_path=policy_dir, **options)
    with pytest.raises(ConfigError, match="rewards must be a list of at least one reward source"):
        OnlineDPOModule([], policy_name_or_path=policy_dir)
    # best_vs_worst makes at most one pair per prompt: 4 prompts cannot fill 5 minibatches.
    module, data, trainer = make(tmp_path, policy_dir, rounds=1, num_minibatches=5)
    with pytest.raises(ConfigError, match=r"num_minibatches is 5, more than the 4 pairs \(at most\)"):
        trainer.fit(module, data)


@pytest.mark.slow  # two processes: about 15 s
def test_two_ddp_ranks_with_different_pair_counts_train_as_one_process(tmp_path, policy_dir, monkeypatch):
    import importlib.util
    import os
    import subprocess
    import sys

    script_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_online_dpo_run.py")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    spec = importlib.util.spec_from_file_location("ddp_online_dpo_run", script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(engine_sampling, "generate", engine_sampling.generate)  # the script installs its sampler
    threads = torch.get_num_threads()
    try:
        script.same_global_batch(policy_dir, str(tmp_path / "one"), "1")
    finally:
        torch.set_num_threads(threads)
    single = torch.load(tmp_path / "one" / "rank0.pt", weights_only=False)
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, script_path, policy_dir, str(tmp_path / "two"), "2"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / "two" / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["iteration"] for r in ranks] == [2, 2]

    # The ranks paired different numbers of answers, together as many as the one process did.
    assert ranks[0]["local_pairs"] != ranks[1]["local_pairs"]
    assert [a + b for a, b in zip(ranks[0]["local_pairs"], ranks[1]["local_pairs"])] == single["local_pairs"]
    # Every optimizer step (2 rounds x 2 epochs) applied the gradient of the mean loss over all the pairs.
    assert len(single["gradients"]) == 4 and all(len(r["gradients"]) == 4 for r in ranks)
    for step, expected in enumerate(single["gradients"]):
        scale = float(expected.abs().max())
        assert scale > 0, step
        for rank in ranks:
            assert float((rank["gradients"][step] - expected).abs().max()) <= 1e-5 * scale, step
    for key, expected in single["policy"].items():
        for rank in ranks:
            torch.testing.assert_close(rank["policy"][key], expected, atol=1e-5, rtol=0, msg=key)
    for name in ("reward", "num_pairs", "frac_no_pair", "loss", "rewards/margins", "rewards/accuracies"):
        for rank in ranks:
            assert rank["metrics"][name] == pytest.approx(single["metrics"][name], rel=1e-5, abs=1e-6), name


def test_every_rule_names_an_argument_of_the_module():
    import inspect

    from lit_rlhf.modules.checks import ONLINE_DPO_RULES

    assert set(ONLINE_DPO_RULES) <= set(inspect.signature(OnlineDPOModule.__init__).parameters)


def test_with_lora_only_the_adapters_train_and_the_reference_is_the_policy_without_them(tmp_path, policy_dir):
    from peft import LoraConfig

    from lit_rlhf.models.adapters import AdaptersDisabled

    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear")
    module, data, trainer = make(tmp_path, policy_dir, rounds=1, pair_rule="all_pairs", peft_config=lora)
    assert isinstance(module.reference, AdaptersDisabled)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.fit(module, data)
    changed = {k for k, v in module.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert trainer.callback_metrics["num_pairs"] > 0
