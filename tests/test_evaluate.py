import json
import math
import subprocess
import sys

import pytest

import lit_rlhf.engines.settings as settings
from lit_rlhf.cli import main as cli_main
from lit_rlhf.errors import ConfigError
from lit_rlhf.evaluate import evaluate_arithmetic, main
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.scoring import NORMALIZATION_KEY, load_reward_model
from lit_rlhf.models.tiny import build_tiny_llama
from tests.conftest import TINY_MODEL_CONFIG


def test_evaluate_reports_gold_metrics_and_the_reward_model_score(tmp_path, capsys):
    tokenizer = build_word_tokenizer()
    policy, reward = str(tmp_path / "policy"), str(tmp_path / "reward")
    build_tiny_llama(tokenizer, TINY_MODEL_CONFIG).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    rm = load_reward_model(policy, tokenizer)
    setattr(rm.config, NORMALIZATION_KEY, {"mean": 0.0, "std": 1.0, "num_responses": 1})
    rm.save_pretrained(reward)
    tokenizer.save_pretrained(reward)

    plain = evaluate_arithmetic(policy, num_val=8, max_new_tokens=6)
    assert "reward" not in plain and plain["num_prompts"] == 8 and 0.0 <= plain["exact_match"] <= 1.0
    scored = evaluate_arithmetic(policy, num_val=8, max_new_tokens=6, reward_model=reward)
    assert math.isfinite(scored["reward"]) and scored["exact_match"] == plain["exact_match"]
    out = tmp_path / "eval" / "result.json"
    main(["--policy", policy, "--num_val", "8", "--max_new_tokens", "6", "--reward_model", reward, "--out", str(out)])
    assert f"reward-model score {scored['reward']:+.3f}" in capsys.readouterr().out
    written = json.loads(out.read_text())
    assert written["policy"] == policy and written["exact_match"] == plain["exact_match"] and "reward" in written
    # The older spelling (a bare policy path, kebab-case options) still parses; --json prints one object.
    main([policy, "--num-val", "8", "--max-new-tokens", "6", "--device", "cpu", "--json"])
    assert json.loads(capsys.readouterr().out)["num_prompts"] == 8


def test_the_vllm_engine_without_vllm_is_one_error_line_before_any_model_loads(monkeypatch, capsys):
    monkeypatch.setattr(settings, "vllm_available", lambda: False)  # as in an environment without vLLM
    missing = "no/such/model"  # never read: the engine is refused first
    for command in (
        f"evaluate --policy {missing} --engine vllm",
        f"winrate --policy {missing} --reference {missing} --prompts arithmetic --judge_llm {missing} --engine vllm",
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli_main(command.split())
        assert exit_info.value.code == 2
        lines = capsys.readouterr().err.splitlines()
        assert lines[0].startswith("lit-rlhf: error: --engine vllm needs vLLM") and "pip install" in lines[0]
        assert len(lines) == 2 and "--debug" in lines[1]
    with pytest.raises(ConfigError, match="pip install"):
        evaluate_arithmetic(missing, engine="vllm")
    with pytest.raises(ConfigError, match="--vllm_kv_cache_gib applies to --engine vllm only"):
        main(["--policy", missing, "--vllm_kv_cache_gib", "1"])


@pytest.mark.skipif(settings.vllm_available(), reason="vLLM is installed here")
def test_python_m_evaluate_with_vllm_missing_prints_one_error_line():
    command = [sys.executable, "-m", "lit_rlhf.evaluate", "--policy", "no/such/model", "--engine", "vllm"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[0].startswith("lit-rlhf: error: --engine vllm needs vLLM, which is not installed")
    assert "pip install" in done.stderr.splitlines()[0]


def test_the_vllm_memory_options_are_checked_before_any_model_loads(monkeypatch):
    monkeypatch.setattr(settings, "vllm_available", lambda: True)  # the checks come before vLLM is imported
    base = ["--policy", "no/such/model", "--engine", "vllm"]
    with pytest.raises(ConfigError, match=r"--vllm_gpu_memory_utilization must be in \(0, 1\], got 1.5"):
        main([*base, "--vllm_gpu_memory_utilization", "1.5"])
    with pytest.raises(ConfigError, match="--vllm_kv_cache_gib must be > 0, got 0.0"):
        main([*base, "--vllm_kv_cache_gib", "0"])
