import json
import os
import subprocess
import sys

import pytest

from lit_rlhf.data import ArithmeticDataModule
from lit_rlhf.data.rows import DataError
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.scoring import load_reward_model
from lit_rlhf.models.tiny import build_tiny_llama
from lit_rlhf.winrate import main, parse_args, read_prompts
from tests.conftest import FIXTURES, TINY_MODEL_CONFIG
from tests.evaluation.toy_judges import save_constant_lm
from tests.rewards.test_judge import save_constant_judge

PROMPTS_FILE = os.path.join(FIXTURES, "winrate", "prompts.jsonl")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("winrate_command")
    return {
        "short": save_constant_lm(str(root / "short"), "2"),
        "long": save_constant_lm(str(root / "long"), "x", repeat=True),
        "judge_b": save_constant_judge(str(root / "judge_b"), "B"),
    }


def test_the_command_on_a_prompts_file_with_an_llm_judge_prints_a_table_and_writes_json(models, tmp_path, capsys):
    out = tmp_path / "results" / "winrate.json"
    args = ["--policy", models["long"], "--reference", models["short"], "--prompts", PROMPTS_FILE]
    args += ["--judge_llm", models["judge_b"], "--num_prompts", "4", "--max_new_tokens", "4", "--batch_size", "3"]
    result = main(args + ["--out", str(out), "--device", "cpu"])
    printed = capsys.readouterr().out
    assert "| win rate | 0.500 |" in printed and "| wins / ties / losses | 0 / 4 / 0 |" in printed
    assert "95% CI (bootstrap) | [0.500, 0.500]" in printed and f"wrote {out}" in printed
    record = json.loads(out.read_text())
    assert record["win_rate"] == 0.5 and record["tie_rate"] == 1.0 and record["num_pairs"] == 4
    assert record["policy"] == models["long"] and record["judge"]["llm"] == models["judge_b"]
    assert len(record["pairs"]) == 4 and record["pairs"][0] == {
        "prompt": "Who was struggling with the phone?",
        "policy_response": "xxxx",
        "reference_response": "2",
        "verdict_policy_as_a": "B",  # the judge always says "B": the reference here, the policy in the other order
        "verdict_policy_as_b": "B",
        "score": 0.5,
    }
    assert result.win_rate == 0.5


def test_a_csv_with_another_prompt_column_and_bad_files(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text('question,id\n"Who was it?",1\n"Who, then?",2\n')
    assert read_prompts(str(path), column="question") == ["Who was it?", "Who, then?"]
    assert read_prompts(str(path), column="question", num_prompts=1) == ["Who was it?"]
    with pytest.raises(DataError, match=r"prompts.csv row 1: missing field 'prompt' \(columns present: id, question\)"):
        read_prompts(str(path))
    with pytest.raises(DataError, match="data file not found"):
        read_prompts(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="must be a .jsonl, .json, .csv or .parquet file or 'arithmetic'"):
        read_prompts("some/hub-dataset")
    with pytest.raises(ValueError, match="arithmetic has 512 held-out prompts"):
        read_prompts("arithmetic", num_prompts=513)


def test_arithmetic_prompts_are_the_held_out_validation_prompts():
    data = ArithmeticDataModule(format="prompt", num_val=512, num_train=8)
    data.connect(build_word_tokenizer())
    data.setup("validate")
    assert read_prompts("arithmetic", num_prompts=5) == [ex["row"]["prompt"] for ex in data.val_dataset[:5]]
    assert len(read_prompts("arithmetic")) == 512


def test_the_command_on_arithmetic_prompts_with_a_reward_model_judge(tmp_path):
    tokenizer = build_word_tokenizer()
    for name in ("policy", "reference"):
        build_tiny_llama(tokenizer, TINY_MODEL_CONFIG).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    load_reward_model("tiny-arithmetic", tokenizer, config_overrides=TINY_MODEL_CONFIG).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    out = tmp_path / "winrate.json"
    command = [sys.executable, "-m", "lit_rlhf", "winrate", "--policy", str(tmp_path / "policy")]
    command += ["--reference", str(tmp_path / "reference"), "--prompts", "arithmetic", "--num_prompts", "6"]
    command += ["--judge_reward_model", str(tmp_path / "rm"), "--max_new_tokens", "6", "--ci_method", "normal"]
    command += ["--out", str(out), "--device", "cpu", "--attn_implementation", "eager"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "on 6 prompts (arithmetic), judge: reward model" in done.stdout and "| win rate |" in done.stdout
    record = json.loads(out.read_text())
    assert record["num_pairs"] == 6 and record["ci_method"] == "normal"
    assert record["ci_low"] <= record["win_rate"] <= record["ci_high"]
    assert [p["prompt"] for p in record["pairs"]] == read_prompts("arithmetic", num_prompts=6)


def test_the_judge_options_exclude_each_other(capsys):
    base = ["--policy", "p", "--reference", "r", "--prompts", "arithmetic"]
    with pytest.raises(SystemExit):
        main(base + ["--judge_llm", "a", "--judge_reward_model", "b"])
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(base)
    assert "one of the arguments --judge_reward_model --judge_llm is required" in capsys.readouterr().err


def test_the_data_seed_and_the_bootstrap_seed_have_their_own_names(capsys):
    base = ["--policy", "p", "--reference", "r", "--prompts", "arithmetic", "--judge_llm", "j", "--device", "cpu"]
    args = parse_args(base + ["--data_seed", "7", "--bootstrap_seed", "3", "--use_chat_template", "false"])
    assert (args.data_seed, args.bootstrap_seed) == (7, 3)
    assert (args.use_chat_template, args.judge_chat_template) == (False, None)  # None: auto
    # The older spellings still parse; a bare --seed, which named one or the other, is refused with both names.
    old = parse_args(base + ["--arithmetic-seed", "8", "--judge-chat-template", "--system-prompt", "s"])
    assert (old.data_seed, old.judge_chat_template, old.judge_system_prompt) == (8, True, "s")
    with pytest.raises(SystemExit):
        parse_args(base + ["--seed", "3"])
    assert "--seed is ambiguous: use --data_seed" in capsys.readouterr().err
