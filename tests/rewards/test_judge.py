import json
import os

import lightning as L
import pytest
import torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

from lit_rlhf.cli import cli_main
from lit_rlhf.data.prompt_optimization import PromptOptimizationDataModule
from lit_rlhf.modules import PPOModule
from lit_rlhf.rewards.base import RewardError
from lit_rlhf.rewards.judge import LLMJudgeReward, format_choices, parse_choice
from tests.conftest import FIXTURES
from tests.helpers import read_events, save_tiny_gpt2

TRAIN = os.path.join(FIXTURES, "prompt_optimization", "train.csv")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "prompt_optimization", "ppo.yaml")
CITIES = ["Paris", "London", "Rome"]
# Texts the tiny tokenizers are trained on: the fixture, digits, letters, and the chat markers of the tests.
TEXTS = [open(TRAIN, encoding="utf-8").read(), "0 1 2 3 4 5 6 7 8 9 x", "<system><user><assistant> Be fair."]


# -- parse_choice: hand-made judge outputs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, choices, expected",
    [
        ("2", CITIES, 1),  # a bare choice number (1-based in the text, 0-based index returned)
        ("Answer: 3.", CITIES, 2),
        (" 1\n\nBecause Paris is the capital.", CITIES, 0),  # the first number wins, not the text after it
        ("2. London", CITIES, 1),
        ("정답은 2번입니다.", CITIES, 1),  # Korean with a digit
        ("최종 답변: ３", CITIES, 2),  # a full-width digit
        ("the answer is Paris", CITIES, 0),  # no number: the choice's text
        ("LONDON!", CITIES, 1),  # the whole answer is one choice, case and punctuation ignored
        ("서울이다", ["부산", "서울", "알 수 없음"], 1),  # containment, so Korean particles still match
        ("알 수 없음", ["서울", "부산", "알 수 없음"], 2),
        ("no idea", CITIES, None),  # neither a number nor a choice: unparsed, no crash (the seed crashed here)
        ("", CITIES, None),
        ("12", CITIES, None),  # a whole number out of range is not read as "1" (the seed took the first digit)
        ("Of the 4 options, 2 is right", CITIES, 1),  # out-of-range numbers are skipped
        ("12", ["10", "12", "14"], 1),  # choices that are numbers: the exact text comes first
        ("3 apples", ["3 apples", "5 apples", "8 apples"], 0),
        ("Paris, Texas", ["Paris", "Paris, Texas", "Rome"], 1),  # the same start: the longest choice
        ("Rome, not Paris", CITIES, 2),  # the earliest choice in the answer
    ],
)
def test_parse_choice_on_hand_made_outputs(text, choices, expected):
    assert parse_choice(text, choices) == expected


def test_format_choices_numbers_lines_from_one():
    assert format_choices(CITIES) == "1. Paris\n2. London\n3. Rome"


# -- a tiny judge whose answer is known -----------------------------------------------------------------------------


def save_constant_judge(path: str, answer: str, n_positions: int = 512) -> str:
    """A 2-layer GPT-2 that always answers ``answer`` (one token) and then EOS, whatever the prompt.

    The blocks' output projections are zero, so the residual stream at each position is the embedding of the
    current token (position embeddings are zero too). Every token embeds to e_0 except ``answer``, which embeds to
    e_1; the final LayerNorm maps those to two fixed vectors u_0, u_1 (|u|^2 = 32, u_0 . u_1 ~ -1). The untied LM
    head scores ``answer`` with u_0 and EOS with u_1 (all else 0): after any other token the logits are 32 for
    ``answer`` and about -1 for EOS; after ``answer`` the other way round. Greedy decoding thus writes
    ``answer`` then EOS.
    """
    save_tiny_gpt2(path, TEXTS)
    tokenizer = AutoTokenizer.from_pretrained(path)
    (answer_id,) = tokenizer(answer, add_special_tokens=False)["input_ids"]  # one token (a byte of the alphabet)
    config = GPT2Config.from_pretrained(path)
    config.tie_word_embeddings = False
    config.n_positions = n_positions
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for block in model.transformer.h:
            for proj in (block.attn.c_proj, block.mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
        model.transformer.wpe.weight.zero_()
        wte = model.transformer.wte.weight
        wte.zero_()
        wte[:, 0] = 1.0
        wte[answer_id] = 0.0
        wte[answer_id, 1] = 1.0
        u = model.transformer.ln_f(torch.eye(config.n_embd)[:2])
        model.lm_head.weight.zero_()
        model.lm_head.weight[answer_id] = u[0]
        model.lm_head.weight[tokenizer.eos_token_id] = u[1]
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def judge_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("judges")
    return {answer: save_constant_judge(str(root / answer), answer) for answer in ("2", "x")}


ROWS = [
    {"context": "Paris, London and Rome.", "question": "Capital of France?", "choices": CITIES, "answer": "Paris"},
    {"context": "Two, cities.", "question": "Capital of the UK?", "choices": CITIES, "answer": "London"},
    {"context": "", "question": "Capital of Italy?", "choices": CITIES, "answer": "Rome"},
    {
        "context": "Korean.",
        "question": "Who?",
        "choices": ["서울 출신", "부산 출신", "알 수 없음"],
        "answer": "부산 출신",
    },
]
COMPLETIONS = ["Be fair.", "Think step by step, without bias.", "", "Be fair and neutral, and logical."]


def call(judge, completions=COMPLETIONS, rows=ROWS):
    return judge(["instruction"] * len(rows), completions, rows).tolist()


def test_a_judge_that_answers_2_rewards_the_rows_whose_answer_is_choice_2(judge_dirs):
    judge = LLMJudgeReward(judge_dirs["2"], max_new_tokens=4, batch_size=3)
    assert call(judge) == [-1.0, 1.0, -1.0, 1.0]
    assert judge.last_outputs == ["2"] * 4 and judge.last_choices == [1] * 4
    assert judge.last_stats == {"judge/parsed_rate": 1.0, "judge/correct_rate": 0.5, "judge/truncated_rate": 0.0}
    custom = LLMJudgeReward(judge_dirs["2"], correct_reward=2.0, wrong_reward=0.0, max_new_tokens=4)
    assert call(custom) == [0.0, 2.0, 0.0, 2.0]


def test_an_unparseable_judge_gets_unparsed_reward_without_crashing(judge_dirs):
    judge = LLMJudgeReward(judge_dirs["x"], max_new_tokens=4)
    assert call(judge) == [-1.0] * 4  # unparsed_reward defaults to wrong_reward
    assert judge.last_outputs == ["x"] * 4 and judge.last_choices == [None] * 4
    assert judge.last_stats["judge/parsed_rate"] == 0.0 and judge.last_stats["judge/correct_rate"] == 0.0
    judge = LLMJudgeReward(judge_dirs["x"], max_new_tokens=4, unparsed_reward=-2.0)
    assert call(judge) == [-2.0] * 4


def test_the_judge_is_frozen_greedy_and_reads_left_padded_batches_like_single_prompts(tmp_path):
    path = save_tiny_gpt2(str(tmp_path / "random"), TEXTS)
    model = GPT2LMHeadModel.from_pretrained(path)
    with torch.no_grad():  # large random weights, so that its answers depend on the prompt
        for param in model.parameters():
            param.normal_(std=0.5)
    model.save_pretrained(path)
    single = LLMJudgeReward(path, batch_size=1, max_new_tokens=6)
    batched = LLMJudgeReward(path, batch_size=4, max_new_tokens=6)
    assert single.tokenizer.padding_side == "left" and not single.model.training
    assert not any(p.requires_grad for p in single.model.parameters())
    first = call(single)
    outputs = list(single.last_outputs)
    assert call(single) == first and single.last_outputs == outputs  # greedy: the same answers again
    assert call(batched) == first and batched.last_outputs == outputs  # padding does not change an answer
    assert len(set(outputs)) > 1  # not trivially equal: the prompts lead to different answers


def test_prompt_rendering_raw_and_chat(judge_dirs, tmp_path):
    judge = LLMJudgeReward(judge_dirs["2"])
    assert not judge.use_chat_template  # the tiny tokenizer has no chat template
    assert judge.render(judge.fields(" Be fair. ", ROWS[0])) == (
        "Be fair.\n\nContext: Paris, London and Rome.\nQuestion: Capital of France?\nChoices:\n"
        "1. Paris\n2. London\n3. Rome\nGive your final answer as only one of 1, 2, 3, without explanation.\n"
        "Final answer:"
    )
    raw = LLMJudgeReward(judge_dirs["2"], raw_template="[{completion}] {question} ({num_choices}) {answer}")
    assert raw.render(raw.fields("Be fair.", ROWS[0])) == "[Be fair.] Capital of France? (3) Paris"

    chat_dir = tmp_path / "chat"
    save_constant_judge(str(chat_dir), "2")
    config_path = chat_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    config_path.write_text(json.dumps(config))
    chat = LLMJudgeReward(str(chat_dir), template="{question}", max_new_tokens=4)
    assert chat.use_chat_template  # None: the judge tokenizer has a chat template
    ids = chat.encode(chat.render(chat.fields("Be fair.", ROWS[0])))
    assert chat.tokenizer.decode(ids) == "<system>Be fair.<user>Capital of France?<assistant>"
    assert call(chat) == [-1.0, 1.0, -1.0, 1.0]
    assert not LLMJudgeReward(str(chat_dir), use_chat_template=False).use_chat_template


def test_long_prompts_keep_their_end_and_are_counted(judge_dirs):
    judge = LLMJudgeReward(judge_dirs["2"], max_prompt_length=24, max_new_tokens=4)
    assert call(judge) == [-1.0, 1.0, -1.0, 1.0]  # the answer still comes (the cue at the end is kept)
    assert judge.last_stats["judge/truncated_rate"] == 1.0
    with pytest.raises(ValueError, match=r"max_prompt_length=600 \+ max_new_tokens=4 exceed the context .*512"):
        LLMJudgeReward(judge_dirs["2"], max_prompt_length=600, max_new_tokens=4)


def test_bad_rows_and_settings_are_named(judge_dirs):
    judge = LLMJudgeReward(judge_dirs["2"], max_new_tokens=2)
    no_answer = [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "answer"}]
    with pytest.raises(RewardError, match="llm_judge: row of sample 1 needs an 'answer' string"):
        call(judge, COMPLETIONS[:2], no_answer)
    as_text = [ROWS[0], {**ROWS[1], "choices": "['Paris', 'London']"}]
    with pytest.raises(RewardError, match="row of sample 1 needs 'choices' as a non-empty list of strings, got str"):
        call(judge, COMPLETIONS[:2], as_text)
    no_context = [ROWS[0], {k: v for k, v in ROWS[1].items() if k != "context"}]
    with pytest.raises(RewardError, match=r"names 'context' but the row of sample 1 has no such field"):
        call(judge, COMPLETIONS[:2], no_context)
    with pytest.raises(ValueError, match="templates cannot be rendered"):
        LLMJudgeReward(judge_dirs["2"], template="{question")
    with pytest.raises(ValueError, match="use_chat_template=True but the judge tokenizer .* has none"):
        LLMJudgeReward(judge_dirs["2"], use_chat_template=True)
    assert call(judge, [], []) == [] and judge.last_stats == {}


# -- PPO with the judge: real steps on the fixture ------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Every response of this rollout batch")
def test_ppo_with_the_judge_trains_the_policy_logs_the_reward_and_never_touches_the_judge(tmp_path, judge_dirs):
    policy_dir = save_tiny_gpt2(str(tmp_path / "policy"), TEXTS + ["Write a system prompt."])
    L.seed_everything(0)
    judge = LLMJudgeReward(judge_dirs["2"], max_new_tokens=4)
    module = PPOModule(
        judge,
        policy_name_or_path=policy_dir,
        max_new_tokens=6,
        ppo_epochs=1,
        num_minibatches=1,
        missing_eos_penalty=None,  # the score is then the judge's reward alone
        actor_learning_rate=1e-3,
        critic_learning_rate=1e-3,
    )
    data = PromptOptimizationDataModule(
        train=TRAIN, instruction="Write a system prompt.", val_fraction=0.3, batch_size=6, max_length=64
    )
    trainer = L.Trainer(
        max_steps=2,  # iterations
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        val_check_interval=2,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
    )
    judge_before = {k: v.clone() for k, v in judge.model.state_dict().items()}
    actor_before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer.fit(module, data)

    assert module.iteration == 2
    # The judge answers "2" to every question, so a row scores +1 exactly when its answer is its second choice:
    # the logged score is the mean of that over the batch (all 6 training rows), whatever the policy wrote.
    expected = [1.0 if ex["row"]["answer"] == ex["row"]["choices"][1] else -1.0 for ex in data.train_dataset]
    assert trainer.callback_metrics["objective/score"].item() == pytest.approx(sum(expected) / len(expected))
    val = [1.0 if ex["row"]["answer"] == ex["row"]["choices"][1] else -1.0 for ex in data.val_dataset]
    assert trainer.callback_metrics["val/reward"].item() == pytest.approx(sum(val) / len(val))
    assert judge.last_stats["judge/parsed_rate"] == 1.0
    assert any(not torch.equal(v, actor_before[k]) for k, v in module.model.state_dict().items())
    # The judge: unchanged, on the module's device, and not part of the module's state or of the checkpoint.
    for name, value in judge.model.state_dict().items():
        assert torch.equal(value, judge_before[name]), name
    assert next(judge.model.parameters()).device == module.device
    trainer.save_checkpoint(tmp_path / "ppo.ckpt")
    state = torch.load(tmp_path / "ppo.ckpt", weights_only=False)["state_dict"]
    assert {key.split(".")[0] for key in state} <= {"model", "critic", "val_metrics"}
    assert len(state) == len(module.state_dict())
    assert "reward" not in module.hparams


@pytest.mark.filterwarnings("ignore:Every response of this rollout batch")
def test_the_shipped_config_runs_with_tiny_models_in_place_of_the_hub_ones(tmp_path, judge_dirs):
    policy_dir = save_tiny_gpt2(str(tmp_path / "policy"), TEXTS)
    run_dir = tmp_path / "runs" / "prompt_optimization" / "ppo"
    cli = cli_main(
        [
            "fit",
            "--config",
            CONFIG,
            "--model.init_args.policy_name_or_path",
            policy_dir,
            "--model.init_args.reward.init_args.judge_name_or_path",
            judge_dirs["2"],  # loaded in bfloat16 as the config says
            "--model.init_args.max_new_tokens",
            "6",
            "--data.init_args.train",
            TRAIN,
            "--data.init_args.val_fraction",
            "0.1",  # 8 training rows: one batch of 8, split into the config's 4 minibatches
            "--data.init_args.batch_size",
            "8",
            "--data.init_args.max_length",
            "64",
            "--data.init_args.max_prompt_length",
            "48",  # the long default instruction keeps its end (a logged truncation)
            "--trainer.accelerator",
            "cpu",
            "--trainer.precision",
            "32-true",
            "--trainer.max_steps",
            "1",  # one iteration
            "--trainer.val_check_interval",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.logger.init_args.save_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert cli.model.iteration == 1 and cli.model.reward.model.dtype == torch.bfloat16
    scalars, _ = read_events(str(run_dir))
    rows = [ex["row"] for ex in cli.datamodule.train_dataset]
    expected = sum(1.0 if r["answer"] == r["choices"][1] else -1.0 for r in rows) / len(rows)
    # missing_eos_penalty 1.0 applies to the samples without EOS, so the score is at most the judge's mean reward.
    assert scalars["objective/score"][0][1] <= expected + 1e-6 and "val/reward" in scalars
    assert os.path.isfile(run_dir / "hf" / "model.safetensors")
