import os
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lit_rlhf.callbacks.win_rate import WinRateCallback
from lit_rlhf.cli import cli_main
from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.data.collate import PromptCollator
from lit_rlhf.evaluation import greedy_responses
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.loading import load_causal_lm
from lit_rlhf.modules import PPOModule
from lit_rlhf.modules.grpo import GRPOModule
from lit_rlhf.rewards import ArithmeticVerifierReward
from tests.conftest import TINY_MODEL_CONFIG
from tests.evaluation.toy_judges import AlwaysA, PrefersLonger
from tests.helpers import read_events, tiny_cli_args
from tests.rewards.test_judge import save_constant_judge

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRPO_CONFIG = os.path.join(ROOT, "configs", "arithmetic", "grpo.yaml")


def trainer_for(tmp_path, callback, max_steps, logger=False, sanity_steps=0):
    return L.Trainer(
        max_steps=max_steps,
        default_root_dir=tmp_path,
        logger=logger,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        val_check_interval=1,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=sanity_steps,
    )


def greedy(model, tokenizer, examples, max_new_tokens):
    ids = [ex["prompt_ids"] for ex in examples]
    return greedy_responses(model, tokenizer, ids, max_new_tokens=max_new_tokens, batch_size=3)


def test_grpo_without_reference_loads_one_and_logs_the_win_rate(tmp_path, policy_dir):
    L.seed_everything(0)
    module = GRPOModule(
        [ArithmeticVerifierReward("graded_score")],
        policy_name_or_path=policy_dir,
        num_generations=2,
        max_new_tokens=6,
        learning_rate=1e-2,
        beta=0.0,  # no reference in the module
    )
    with (
        torch.no_grad()
    ):  # move the policy far from its starting point, so that its answers differ from the reference's
        for param in module.model.parameters():
            param.add_(torch.randn_like(param) * 0.5)
    data = ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=4)
    judge = AlwaysA()
    callback = WinRateCallback(judge, num_prompts=3, every_n_validations=2, batch_size=2)
    logger = TensorBoardLogger(str(tmp_path), name="", version="run")
    trainer = trainer_for(tmp_path, callback, max_steps=2, logger=logger, sanity_steps=1)  # 2 iterations
    trainer.fit(module, data)

    # Two validations after the sanity check (skipped): judged at the second only, on the first 3 prompts, both
    # orders in one call.
    assert callback.validations == 2 and len(judge.calls) == 1
    prompts, responses_a, responses_b = judge.calls[0]
    examples = data.val_dataset[:3]
    assert prompts == [ex["row"]["prompt"] for ex in examples] * 2
    policy = greedy(module.model, module.tokenizer, examples, 6)  # the last validation came after the last step
    fresh = load_causal_lm(policy_dir, module.tokenizer, config_overrides=None)
    reference = greedy(fresh, module.tokenizer, examples, 6)
    assert responses_a == policy + reference and responses_b == reference + policy
    assert policy != reference  # not trivially equal: the policy is not the reference
    assert judge.device == module.device

    result = callback.last_result
    assert result.win_rate == 0.5 and result.tie_rate == 1.0  # position bias cancelled by the order swap
    scalars, texts = read_events(str(tmp_path / "run"))
    for name, value in (
        ("val/win_rate", 0.5),
        ("val/win_rate_ci_low", 0.5),
        ("val/win_rate_ci_high", 0.5),
        ("val/tie_rate", 1.0),
        ("val/abstain_rate", 0.0),
    ):
        assert [v for _, v in scalars[name]] == [value], name
    assert scalars["val/win_rate"][0][0] == scalars["val/exact_match"][-1][0]  # the step of the other val/ figures
    (table,) = texts["samples/win_rate/text_summary"]
    assert table.startswith("win rate 0.500 [0.500, 0.500] over 3 prompts: 0 wins, 3 ties, 0 losses")
    assert "| prompt | policy | reference | verdict, policy as A | verdict, policy as B | score |" in table

    # The loaded reference and the judge stay out of the module and of the checkpoint.
    assert callback._reference is not None and not any("reference" in k for k in module.state_dict())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert checkpoint["callbacks"][callback.state_key] == {"validations": 2}
    assert len(checkpoint["state_dict"]) == len(module.state_dict())


def test_ppo_uses_its_own_reference(tmp_path, policy_dir):
    L.seed_everything(0)
    module = PPOModule(
        ArithmeticVerifierReward("graded_score"),
        policy_name_or_path=policy_dir,
        max_new_tokens=6,
        ppo_epochs=1,
        num_minibatches=1,
        actor_learning_rate=1e-2,
    )
    data = ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=4)
    callback = WinRateCallback(PrefersLonger(), num_prompts=8, num_logged_pairs=0, ci_method="normal")
    trainer = trainer_for(tmp_path, callback, max_steps=1)  # one iteration
    trainer.fit(module, data)
    assert callback._reference is None  # the module's reference was used, nothing loaded
    result = callback.last_result
    assert result.num_pairs == 8 and callback.validations == 1
    reference = greedy(module.reference, module.tokenizer, data.val_dataset[:8], 6)
    assert [p.reference_response for p in result.pairs] == reference
    assert trainer.callback_metrics["val/win_rate"].item() == pytest.approx(result.win_rate)
    assert trainer.callback_metrics["val/tie_rate"].item() == pytest.approx(result.tie_rate)


def test_prompts_from_the_validation_dataloader_without_a_val_dataset():
    tokenizer = build_word_tokenizer()
    examples = [{"prompt_ids": tokenizer(p)["input_ids"], "row": {"prompt": p}} for p in ("1 2", "3 4 5", "6")]
    loader = DataLoader(examples, batch_size=2, collate_fn=PromptCollator(tokenizer.pad_token_id))
    callback = WinRateCallback(AlwaysA(), num_prompts=2)
    prompts, ids = callback.validation_prompts(SimpleNamespace(datamodule=None, val_dataloaders=loader))
    assert prompts == ["1 2", "3 4 5"] and ids == [ex["prompt_ids"] for ex in examples[:2]]  # padding removed
    with pytest.raises(ValueError, match="no validation prompts"):
        callback.validation_prompts(SimpleNamespace(datamodule=None, val_dataloaders=[]))
    with pytest.raises(TypeError, match="must be a lit_rlhf.evaluation.PairwiseJudge"):
        WinRateCallback(lambda p, a, b: ["A"] * len(p))
    with pytest.raises(ValueError, match="num_prompts and every_n_validations must be >= 1"):
        WinRateCallback(AlwaysA(), num_prompts=0)


def test_the_callback_from_yaml_with_an_llm_judge(tmp_path, policy_dir):
    judge_dir = save_constant_judge(str(tmp_path / "judge_b"), "B")
    extra = tmp_path / "winrate.yaml"
    callback = {
        "class_path": "lit_rlhf.callbacks.win_rate.WinRateCallback",
        "init_args": {
            "judge": {
                "class_path": "lit_rlhf.evaluation.LLMPairwiseJudge",
                "init_args": {"judge_name_or_path": judge_dir, "batch_size": 8},
            },
            "num_prompts": 4,
        },
    }
    extra.write_text(yaml.safe_dump({"trainer": {"callbacks": [callback]}}))
    run_dir = tmp_path / "runs" / "arithmetic" / "grpo"
    args = tiny_cli_args(GRPO_CONFIG, str(run_dir), max_steps=1)  # one iteration
    args += ["--config", str(extra), "--model.init_args.policy_name_or_path", policy_dir]
    args += ["--model.init_args.num_generations", "2", "--model.init_args.max_new_tokens", "6"]
    args += ["--data.init_args.batch_size", "4", "--trainer.val_check_interval", "1"]
    cli = cli_main(args)
    (win_rate_callback,) = [c for c in cli.trainer.callbacks if isinstance(c, WinRateCallback)]
    assert cli.model.hparams.model_config == TINY_MODEL_CONFIG
    assert win_rate_callback.last_result.num_pairs == 4
    assert next(win_rate_callback.judge.model.parameters()).device == cli.model.device
    scalars, texts = read_events(str(run_dir))
    assert [v for _, v in scalars["val/win_rate"]] == [0.5]  # a judge that always says "B": all ties
    assert [v for _, v in scalars["val/tie_rate"]] == [1.0]
    assert "samples/win_rate/text_summary" in texts


def test_the_frozen_reference_answers_once_for_every_validation(tmp_path, policy_dir, monkeypatch):
    import lit_rlhf.evaluation.compare as compare

    calls = []
    original = compare.greedy_responses

    def counting(model, *args, **kwargs):
        calls.append(model)
        return original(model, *args, **kwargs)

    monkeypatch.setattr(compare, "greedy_responses", counting)
    L.seed_everything(0)
    module = PPOModule(
        ArithmeticVerifierReward("graded_score"),
        policy_name_or_path=policy_dir,
        max_new_tokens=6,
        ppo_epochs=1,
        num_minibatches=1,
        actor_learning_rate=1e-2,
    )
    data = ArithmeticDataModule(format="prompt", num_train=32, num_val=8, batch_size=4)
    callback = WinRateCallback(PrefersLonger(), num_prompts=8, num_logged_pairs=0, ci_method="normal")
    trainer = trainer_for(tmp_path, callback, max_steps=2)  # two iterations, a validation after each
    trainer.fit(module, data)
    assert callback.validations == 2
    assert calls == [module.model, module.reference, module.model]  # the policy twice, the reference once
    reference = greedy(module.reference, module.tokenizer, data.val_dataset[:8], 6)
    assert [p.reference_response for p in callback.last_result.pairs] == reference


def test_the_callback_is_refused_under_fsdp2_with_a_pointer_to_the_winrate_command():
    from lit_rlhf.errors import ConfigError
    from lit_rlhf.strategies import FSDP2Strategy

    callback = WinRateCallback(AlwaysA())
    trainer = SimpleNamespace(strategy=FSDP2Strategy(), is_global_zero=True)
    with pytest.raises(ConfigError, match="WinRateCallback generates on rank 0 alone.*lit-rlhf winrate"):
        callback.setup(trainer, SimpleNamespace(model=None, tokenizer=None), "fit")
