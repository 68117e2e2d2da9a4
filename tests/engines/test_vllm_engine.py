"""The vLLM engine samples what Hugging Face ``generate`` samples: greedy answers token for token, the same
distribution under temperature, top-k and top-p, from the weights it was last fed (whole or LoRA merged)."""

import pytest
import torch
from peft import LoraConfig

from lit_rlhf.engines.settings import VLLMSettings
from lit_rlhf.engines.vllm_engine import VLLMEngine
from lit_rlhf.engines.weights import engine_weights
from lit_rlhf.functional.padding import pad_left
from lit_rlhf.generation import generate
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.adapters import apply_adapters
from lit_rlhf.models.tiny import build_tiny_llama
from lit_rlhf.rollout import response_logprobs
from tests.helpers import needs_vllm

pytestmark = needs_vllm()

# head_dim 32: the smallest vLLM's CPU attention runs. A wide initialisation gives varied greedy answers.
VLLM_TINY_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "initializer_range": 0.2,
    "max_position_embeddings": 512,  # prompts of two whole KV blocks (128 tokens each on the CPU)
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return build_tiny_llama(tokenizer, VLLM_TINY_CONFIG).eval()


@pytest.fixture(scope="module")
def engine(model):
    engine = VLLMEngine.for_policy(model, VLLMSettings(kv_cache_gib=0.25), weights=engine_weights(model))
    yield engine
    engine.close()


def _prompts(tokenizer, lengths, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, len(tokenizer), (n,), generator=generator).tolist() for n in lengths]


def _both(model, engine, tokenizer, prompts, **kwargs):
    """The same request through ``generate`` (left-padded batch) and through the engine."""
    ids, mask = pad_left(prompts, tokenizer.pad_token_id)
    common = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id, **kwargs}
    return generate(model, ids, mask, **common), engine.generate(prompts, **common)


def _assert_same(expected, got):
    assert torch.equal(got.response_ids, expected.response_ids)
    assert torch.equal(got.response_mask, expected.response_mask)
    assert torch.equal(got.has_eos, expected.has_eos)


def test_greedy_answers_equal_generate(model, engine, tokenizer):
    prompts = _prompts(tokenizer, [3, 9, 5, 14])
    expected, got = _both(model, engine, tokenizer, prompts, max_new_tokens=12)
    assert len({tuple(row.tolist()) for row in expected.response_ids}) > 1  # not one token repeated everywhere
    _assert_same(expected, got)


def test_answers_stop_at_eos_and_pad_after_it_as_generate_does(model, engine, tokenizer):
    """An EOS made likely (its embedding row scaled) ends some answers early; the engine is fed the changed weights."""
    prompts = _prompts(tokenizer, [4, 7, 5, 9, 3, 6, 8, 5], seed=1)
    changed = build_tiny_llama(tokenizer, VLLM_TINY_CONFIG).eval()
    for scale in (1.5, 2.0, 2.5, 3.0, 4.0):  # the first scale where some answers end with EOS and some do not
        changed.load_state_dict(model.state_dict())
        with torch.no_grad():
            changed.model.embed_tokens.weight[tokenizer.eos_token_id] *= scale
        ids, mask = pad_left(prompts, tokenizer.pad_token_id)
        ends = generate(
            changed,
            ids,
            mask,
            max_new_tokens=10,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).has_eos
        if ends.any() and not ends.all():
            break
    engine.load_weights(engine_weights(changed))
    try:
        expected, got = _both(changed, engine, tokenizer, prompts, max_new_tokens=10)
        assert expected.has_eos.any() and not expected.has_eos.all()
        _assert_same(expected, got)
        assert (got.response_ids[~got.response_mask] == tokenizer.pad_token_id).all()
    finally:
        engine.load_weights(engine_weights(model))


def test_after_an_update_the_engine_answers_with_the_new_weights_not_its_cached_prompts(model, engine, tokenizer):
    block = engine.llm.llm_engine.vllm_config.cache_config.block_size
    prompts = _prompts(tokenizer, [2 * block + 3, 2 * block + 5], seed=2)  # whole KV blocks the prefix cache keeps
    before, _ = _both(model, engine, tokenizer, prompts, max_new_tokens=8)
    updated = build_tiny_llama(tokenizer, VLLM_TINY_CONFIG).eval()
    updated.load_state_dict(model.state_dict())
    with torch.no_grad():
        for param in updated.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    engine.load_weights(engine_weights(updated))
    try:
        expected, got = _both(updated, engine, tokenizer, prompts, max_new_tokens=8)
        assert not torch.equal(expected.response_ids, before.response_ids)
        _assert_same(expected, got)
    finally:
        engine.load_weights(engine_weights(model))


def test_lora_adapters_reach_the_engine_merged(model, engine, tokenizer):
    adapted = build_tiny_llama(tokenizer, VLLM_TINY_CONFIG).eval()
    adapted.load_state_dict(model.state_dict())
    apply_adapters(adapted, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), "peft_config")
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.3)
    base = {k: v.clone() for k, v in adapted.state_dict().items()}
    engine.load_weights(engine_weights(adapted))
    try:
        prompts = _prompts(tokenizer, [5, 8, 3], seed=3)
        expected, got = _both(adapted, engine, tokenizer, prompts, max_new_tokens=10)
        plain, _ = _both(model, engine, tokenizer, prompts, max_new_tokens=10)
        assert not torch.equal(expected.response_ids, plain.response_ids)  # the adapters change the answers
        _assert_same(expected, got)
        assert all(torch.equal(v, base[k]) for k, v in adapted.state_dict().items())  # unmerged: untouched
    finally:
        engine.load_weights(engine_weights(model))


def test_seeds_fix_the_samples_and_samples_are_prompt_major(engine, tokenizer):
    prompts = _prompts(tokenizer, [4, 6, 5], seed=4)
    kwargs = {"max_new_tokens": 6, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    first = engine.generate(prompts, do_sample=True, num_samples=4, seeds=[1, 2, 3], **kwargs)
    again = engine.generate(prompts, do_sample=True, num_samples=4, seeds=[1, 2, 3], **kwargs)
    other = engine.generate(prompts, do_sample=True, num_samples=4, seeds=[7, 8, 9], **kwargs)
    assert first.response_ids.size(0) == 12
    assert torch.equal(first.response_ids, again.response_ids)
    assert not torch.equal(first.response_ids, other.response_ids)
    # top_k 1 keeps the greedy token only: every sample of a prompt is its greedy answer, in prompt order.
    greedy = engine.generate(prompts, **kwargs)
    top1 = engine.generate(prompts, do_sample=True, top_k=1, num_samples=3, seeds=[1, 2, 3], **kwargs)
    assert torch.equal(top1.response_ids, greedy.response_ids.repeat_interleave(3, dim=0))
    assert top1.response_ids.size(1) <= 6


def _filtered_probabilities(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Hugging Face's order: temperature, then top-k, then top-p (the smallest set of tokens reaching ``top_p``)."""
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_k:
        kth = probs.topk(top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the tokens ranked above each one
        keep = torch.zeros_like(probs, dtype=torch.bool)
        keep[order] = before < top_p
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        probs = probs / probs.sum()
    return probs


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.3, 5, 1.0), (0.8, 0, 0.7), (1.0, 0, 1.0)])
def test_temperature_top_k_and_top_p_sample_the_same_distribution(model, engine, tokenizer, temperature, top_k, top_p):
    prompt = _prompts(tokenizer, [6], seed=5)[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    expected = _filtered_probabilities(logits, temperature, top_k, top_p)
    n = 4000
    got = engine.generate(
        [prompt],
        max_new_tokens=1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_samples=n,
        seeds=[11],
        return_logprobs=True,
    )
    counts = torch.bincount(got.response_ids[:, 0], minlength=len(expected)).float() / n
    assert (counts[expected == 0] == 0).all()  # nothing outside the filtered set
    # Total variation distance, against what sampling noise alone gives: E|count - p| ~ sqrt(2 p (1 - p) / (pi n)).
    noise = 0.5 * torch.sqrt(2 * expected * (1 - expected) / (torch.pi * n)).sum()
    assert 0.5 * (counts - expected).abs().sum() < 1.5 * noise + 0.01
    if top_k == 0 and top_p == 1.0:
        # Without filters the engine's log-probabilities are the tempered ones the policy recomputes.
        tokens = got.response_ids[:, 0]
        torch.testing.assert_close(got.logprobs[:, 0], expected.log()[tokens], rtol=0, atol=1e-4)


def test_logprobs_equal_the_policys_recomputed_ones(model, engine, tokenizer):
    prompts = _prompts(tokenizer, [4, 7], seed=6)
    got = engine.generate(
        prompts,
        max_new_tokens=8,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.7,
        num_samples=3,
        seeds=[1, 2],
        return_logprobs=True,
    )
    ids, mask = pad_left(prompts, tokenizer.pad_token_id)
    with torch.no_grad():
        recomputed = response_logprobs(
            model, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), got.response_ids, got.response_mask, 0.7
        )
    torch.testing.assert_close(got.logprobs, recomputed, rtol=0, atol=1e-4)
    assert (got.logprobs[~got.response_mask] == 0).all()


def test_bad_requests_are_refused(engine, tokenizer):
    kwargs = {"max_new_tokens": 4, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    with pytest.raises(ValueError, match="empty prompt"):
        engine.generate([[5, 6], []], **kwargs)
    with pytest.raises(ValueError, match="one seed per prompt"):
        engine.generate([[5, 6]], do_sample=True, seeds=[1, 2], **kwargs)
    with pytest.raises(Exception, match="temperature"):
        engine.generate([[5, 6]], do_sample=True, temperature=0.0, **{**kwargs})


def test_more_prompt_tokens_than_one_engine_step_takes_sample_with_seeds(engine, tokenizer):
    """6,400 prompt tokens (above vLLM's 4,096 a step): prefilled whole on the CPU, where seeded samples of a prompt
    prefilled in chunks would fail."""
    prompts = _prompts(tokenizer, [20] * 40, seed=7)
    kwargs = {"max_new_tokens": 4, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    seeds = list(range(40))
    first = engine.generate(prompts, do_sample=True, num_samples=8, seeds=seeds, **kwargs)
    again = engine.generate(prompts, do_sample=True, num_samples=8, seeds=seeds, **kwargs)
    assert first.response_ids.size(0) == 320 and torch.equal(first.response_ids, again.response_ids)
