import json
import math

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
