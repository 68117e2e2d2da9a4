"""``lit-rlhf evaluate`` and ``lit-rlhf winrate`` with ``--engine vllm``: the same answers and figures as ``generate``.

Needs vLLM (``make test-vllm``); each engine build takes a few seconds on the CPU.
"""

import json

import pytest
import torch

import lit_rlhf.generation as generation
from lit_rlhf.engines.settings import VLLMSettings
from lit_rlhf.evaluate import main as evaluate_main
from lit_rlhf.evaluation import RewardModelJudge, win_rate
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.loading import load_causal_lm
from lit_rlhf.models.scoring import NORMALIZATION_KEY, load_reward_model
from lit_rlhf.models.tiny import build_tiny_llama
from lit_rlhf.winrate import main as winrate_main
from lit_rlhf.winrate import read_prompts
from tests.engines.test_vllm_engine import VLLM_TINY_CONFIG
from tests.helpers import needs_vllm

pytestmark = needs_vllm()

# head_dim 32: vLLM's CPU attention needs at least 32.
VLLM_LLAMA = {**VLLM_TINY_CONFIG, "max_position_embeddings": 128}
SMALL_ENGINE = ["--vllm_kv_cache_gib", "0.05"]
SMALL_SETTINGS = VLLMSettings(kv_cache_gib=0.05)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A policy, a reference and a reward model (tiny Llamas of the arithmetic vocabulary), saved with their
    tokenizer."""
    root = tmp_path_factory.mktemp("vllm_evaluate")
    tokenizer = build_word_tokenizer()
    paths = {}
    for seed, name in enumerate(("policy", "reference")):
        torch.manual_seed(seed)
        paths[name] = str(root / name)
        build_tiny_llama(tokenizer, VLLM_LLAMA).save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    reward = load_reward_model(paths["policy"], tokenizer)
    setattr(reward.config, NORMALIZATION_KEY, {"mean": 0.0, "std": 1.0, "num_responses": 1})
    paths["reward"] = str(root / "reward")
    reward.save_pretrained(paths["reward"])
    tokenizer.save_pretrained(paths["reward"])
    return paths


def recording_decoder(monkeypatch):
    """Record every text :func:`lit_rlhf.generation.decode_responses` returns (both engines decode with it)."""
    texts = []
    decode = generation.decode_responses

    def recorded(tokenizer, output):
        decoded = decode(tokenizer, output)
        texts.extend(decoded)
        return decoded

    monkeypatch.setattr(generation, "decode_responses", recorded)
    return texts


def test_evaluate_with_the_vllm_engine_gives_the_answers_and_metrics_of_generate(folders, tmp_path, monkeypatch):
    args = ["--policy", folders["policy"], "--num_val", "8", "--max_new_tokens", "6", "--batch_size", "3"]
    args += ["--reward_model", folders["reward"], "--device", "cpu"]
    texts = recording_decoder(monkeypatch)
    results, answers = {}, {}
    for engine in ("generate", "vllm"):
        out = tmp_path / f"{engine}.json"
        extra = SMALL_ENGINE if engine == "vllm" else []
        results[engine] = evaluate_main([*args, "--engine", engine, *extra, "--out", str(out)])
        answers[engine] = texts[:]
        texts.clear()
        assert json.loads(out.read_text())["engine"] == engine
    assert len(answers["vllm"]) == 8 and any(answers["vllm"])
    assert answers["vllm"] == answers["generate"]
    metrics = ("exact_match", "graded_score", "eos_rate", "num_prompts")
    assert {k: results["vllm"][k] for k in metrics} == {k: results["generate"][k] for k in metrics}
    assert results["vllm"]["reward"] == pytest.approx(results["generate"]["reward"], abs=1e-5)


def test_winrate_with_the_vllm_engine_gives_the_pairs_of_generate(folders, capsys):
    args = ["--policy", folders["policy"], "--reference", folders["reference"], "--prompts", "arithmetic"]
    args += ["--num_prompts", "6", "--max_new_tokens", "6", "--judge_reward_model", folders["reward"]]
    args += ["--ci_method", "normal", "--device", "cpu"]
    plain = winrate_main([*args, "--engine", "generate"])
    fast = winrate_main([*args, "--engine", "vllm", *SMALL_ENGINE])
    assert [(p.prompt, p.policy_response, p.reference_response) for p in fast.pairs] == [
        (p.prompt, p.policy_response, p.reference_response) for p in plain.pairs
    ]
    assert [p.prompt for p in fast.pairs] == read_prompts("arithmetic", num_prompts=6)
    assert any(p.policy_response != p.reference_response for p in fast.pairs)
    assert fast.summary() == plain.summary()
    capsys.readouterr()


def test_win_rate_of_a_model_object_through_the_vllm_engine(folders):
    """A model object's weights are handed to the engine (no folder): its answers equal ``generate``'s."""
    tokenizer = build_word_tokenizer()
    policy = load_causal_lm(folders["policy"], tokenizer).eval()
    prompts = read_prompts("arithmetic", num_prompts=4)
    judge = RewardModelJudge(folders["reward"])
    common = {"tokenizer": tokenizer, "reference_responses": ["1"] * 4, "use_chat_template": False}
    common |= {"ci_method": "normal"}
    plain = win_rate(policy, folders["reference"], prompts, judge, 6, 2, **common)
    fast = win_rate(policy, folders["reference"], prompts, judge, 6, 2, engine="vllm", vllm=SMALL_SETTINGS, **common)
    assert [p.policy_response for p in fast.pairs] == [p.policy_response for p in plain.pairs]
    assert fast.win_rate == plain.win_rate
