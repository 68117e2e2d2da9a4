import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_rlhf.data.collate import pad_left
from lit_rlhf.generation import generate
from lit_rlhf.models import build_word_tokenizer, load_tokenizer
from lit_rlhf.models.scoring import load_reward_model, token_scores
from lit_rlhf.models.tiny import build_tiny_llama
from lit_rlhf.rollout import padding_trim, position_ids_from_mask, response_logprobs, response_values
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import save_tiny_gpt2

PROMPTS = ["make a series 1 2", "make a series of arithmetic type which starts at 5", "series"]


def test_position_ids_count_from_the_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    assert position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2, 2], [0, 1, 2, 3, 4, 5]]


def tiny_causal_lm(kind, tmp_path):
    """A tiny Llama (rotary positions) or GPT-2 (learned absolute positions) and its tokenizer."""
    if kind == "llama":
        tokenizer = build_word_tokenizer()
        return build_tiny_llama(tokenizer, TINY_MODEL_CONFIG), tokenizer
    path = save_tiny_gpt2(str(tmp_path / "gpt2"), PROMPTS)
    return AutoModelForCausalLM.from_pretrained(path), load_tokenizer(path)


def sample_with_logprobs(model, tokenizer, temperature):
    ids, mask = pad_left([tokenizer(p)["input_ids"] for p in PROMPTS], tokenizer.pad_token_id)
    generation = generate(
        model,
        ids,
        mask,
        max_new_tokens=6,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=temperature,
        return_logprobs=True,  # read from the sampling pass's logits, divided by the temperature
    )
    return ids, mask, generation.response_ids, generation.response_mask, generation.logprobs


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # rotary positions, and learned absolute positions
def test_forward_logprobs_equal_the_sampling_pass_under_left_padding(kind, tmp_path):
    model, tokenizer = tiny_causal_lm(kind, tmp_path)
    model.eval()
    torch.manual_seed(0)
    ids, mask, response, response_mask, expected = sample_with_logprobs(model, tokenizer, temperature=0.7)
    with torch.no_grad():
        got = response_logprobs(model, ids, mask, response, response_mask, temperature=0.7)
    assert got.shape == response.shape and bool((expected[response_mask] < 0).all())
    assert bool((expected[~response_mask] == 0).all())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_values_are_read_at_the_position_before_each_response_token(word_tokenizer):
    critic = load_reward_model("tiny-arithmetic", word_tokenizer, config_overrides=TINY_MODEL_CONFIG).eval()
    prompt_ids, prompt_mask = pad_left([[5, 6, 7], [8]], word_tokenizer.pad_token_id)
    response = torch.tensor([[9, 3], [10, 11]])
    response_mask = torch.tensor([[True, True], [True, False]])
    with torch.no_grad():
        values = response_values(critic, prompt_ids, prompt_mask, response, response_mask)
        # Row 1 alone, unpadded: [8, 10] -> V_0 at position 0 (before 10); the token after 10 is padding.
        alone = token_scores(critic, torch.tensor([[8, 10]]), torch.ones(1, 2, dtype=torch.long))
        # Row 0 alone: [5, 6, 7, 9, 3] -> V_0 at position 2 (before 9), V_1 at position 3 (before 3).
        alone0 = token_scores(critic, torch.tensor([[5, 6, 7, 9, 3]]), torch.ones(1, 5, dtype=torch.long))
    torch.testing.assert_close(values[0], alone0[0, 2:4], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values[1, 0], alone[0, 0], atol=1e-5, rtol=1e-5)
    assert values[1, 1] == 0.0


def test_padding_trim_keeps_only_the_columns_a_subbatch_needs(word_tokenizer):
    prompt_mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    response_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]]).bool()
    assert padding_trim(prompt_mask[:2], response_mask[:2]) == (1, 3)
    assert padding_trim(prompt_mask[:1], response_mask[:1]) == (2, 2)
    assert padding_trim(prompt_mask, response_mask) == (0, 3)
    # The trimmed rows give the same log-probabilities and values (positions count from the first real token).
    model = build_tiny_llama(word_tokenizer, TINY_MODEL_CONFIG).eval()
    critic = load_reward_model("tiny-arithmetic", word_tokenizer, config_overrides=TINY_MODEL_CONFIG).eval()
    torch.manual_seed(0)
    prompt_ids = torch.randint(5, 50, prompt_mask.shape) * prompt_mask
    response_ids = torch.randint(5, 50, response_mask.shape) * response_mask
    with torch.no_grad():
        for fn in (lambda *a: response_logprobs(model, *a), lambda *a: response_values(critic, *a)):
            full = fn(prompt_ids[:1], prompt_mask[:1], response_ids[:1], response_mask[:1])
            trimmed = fn(prompt_ids[:1, 2:], prompt_mask[:1, 2:], response_ids[:1, :2], response_mask[:1, :2])
            torch.testing.assert_close(trimmed, full[:, :2], atol=1e-5, rtol=1e-5)
            assert bool((full[:, 2:] == 0).all())


def test_select_rows_trims_prompt_and_response_columns_and_indexes_per_row_fields():
    from typing import NamedTuple

    from lit_rlhf.rollout import select_rows

    class Batch(NamedTuple):
        prompt_ids: torch.Tensor
        prompt_mask: torch.Tensor
        response_ids: torch.Tensor
        response_mask: torch.Tensor
        advantages: torch.Tensor

    batch = Batch(
        torch.tensor([[0, 0, 5], [0, 6, 7], [8, 9, 10]]),
        torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 1]]),
        torch.tensor([[1, 2, 0], [3, 0, 0], [4, 5, 6]]),
        torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool),
        torch.tensor([0.5, -1.0, 2.0]),
    )
    picked = select_rows(batch, torch.tensor([1, 0]))
    # rows 1 and 0 need prompt columns from 1 on and response columns up to 2
    assert isinstance(picked, Batch)
    assert picked.prompt_ids.tolist() == [[6, 7], [0, 5]] and picked.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert picked.response_ids.tolist() == [[3, 0], [1, 2]]
    assert picked.advantages.tolist() == [-1.0, 0.5]


def weighted_backward(model, logprobs, entropy):
    """Backward of a loss that weighs every position differently (a row or position mix-up changes the gradients);
    returns ``(logprobs, entropy, gradients)``."""
    model.zero_grad()
    (logprobs * torch.linspace(0.5, 2.0, logprobs.numel()).view_as(logprobs)).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logprobs.detach(), entropy, grads


def assert_same_logprobs_and_gradients(result, expected):
    (logprobs, entropy, grads), (expected_logprobs, expected_entropy, expected_grads) = result, expected
    torch.testing.assert_close(logprobs, expected_logprobs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, expected_entropy, atol=1e-5, rtol=1e-5)
    assert grads.keys() == expected_grads.keys() and len(expected_grads) > 0
    for name in expected_grads:
        torch.testing.assert_close(grads[name], expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("padding_free", [False, True], ids=["kv-cache", "packed"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_shared_prompt_logprobs_and_gradients_equal_full_rows(kind, padding_free, tmp_path):
    from lit_rlhf.rollout import shared_prompt_response_logprobs

    model, tokenizer = tiny_causal_lm(kind, tmp_path)
    model.eval()  # dropout off; gradients still flow
    prompt_ids, prompt_mask = pad_left([tokenizer(p)["input_ids"] for p in PROMPTS], tokenizer.pad_token_id)
    # Six responses in no particular order, prompts repeated and one prompt (row 1) answered once; right-padded.
    prompt_index = torch.tensor([2, 0, 1, 0, 2, 2])
    torch.manual_seed(0)
    lengths = [3, 1, 5, 2, 4, 5]
    response_mask = torch.arange(5)[None, :] < torch.tensor(lengths)[:, None]
    response_ids = torch.randint(3, 40, (6, 5)) * response_mask + tokenizer.pad_token_id * ~response_mask

    def run(shared: bool):
        if shared:
            args = (model, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask)
            logprobs, entropy = shared_prompt_response_logprobs(
                *args, temperature=0.7, with_entropy=True, padding_free=padding_free
            )
        else:
            args = (model, prompt_ids[prompt_index], prompt_mask[prompt_index], response_ids, response_mask)
            logprobs, entropy = response_logprobs(*args, temperature=0.7, with_entropy=True)
        return weighted_backward(model, logprobs, entropy)

    shared = run(True)
    shared_logprobs = shared[0]
    assert shared_logprobs.shape == response_ids.shape
    assert bool((shared_logprobs[response_mask] < 0).all()) and bool((shared_logprobs[~response_mask] == 0).all())
    assert_same_logprobs_and_gradients(shared, run(False))


def test_first_rows_gives_one_row_per_distinct_key():
    from lit_rlhf.models.shared_prompt import first_rows

    keys = torch.tensor([7, 3, 7, 9, 3, 3])
    rows, index = first_rows(keys)
    assert rows.tolist() == [1, 0, 3]  # the first row holding 3, 7 and 9
    assert index.tolist() == [1, 0, 1, 2, 0, 0]
    assert keys[rows][index].tolist() == keys.tolist()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_several_samples_per_prompt_with_the_prompt_computed_once_equal_repeated_prompts(kind, tmp_path):
    model, tokenizer = tiny_causal_lm(kind, tmp_path)
    model.train()  # generate switches to eval and back
    # The last prompt is one token long: its cached prefix is all padding.
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS[:2]] + [tokenizer(PROMPTS[2])["input_ids"][:1]]
    ids, mask = pad_left(prompts, tokenizer.pad_token_id)
    options = {"max_new_tokens": 6, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    for sampling in ({"do_sample": False}, {"do_sample": True, "temperature": 0.7}):
        runs = []
        for share in (False, True):
            torch.manual_seed(0)
            runs.append(
                generate(
                    model, ids, mask, num_samples=4, share_prompt=share, return_logprobs=True, **options, **sampling
                )
            )
        repeated, shared = runs
        assert shared.response_ids.shape[0] == 12 and model.training
        assert torch.equal(shared.response_ids, repeated.response_ids), sampling
        assert torch.equal(shared.response_mask, repeated.response_mask)
        torch.testing.assert_close(shared.logprobs, repeated.logprobs, atol=1e-5, rtol=1e-5)
    # prompt-major rows: prompt 0's four samples first; greedy samples of one prompt are identical
    greedy = generate(model, ids, mask, num_samples=4, share_prompt=True, **options)
    alone = generate(model, ids[1:2], mask[1:2], **options)
    assert all(torch.equal(greedy.response_ids[i], alone.response_ids[0]) for i in range(4, 8))


def test_only_the_logits_that_predict_response_tokens_are_computed(word_tokenizer):
    model = build_tiny_llama(word_tokenizer, TINY_MODEL_CONFIG).eval()
    prompt_ids, prompt_mask = pad_left([[5, 6, 7, 8, 9, 10], [11, 12]], word_tokenizer.pad_token_id)
    response_ids = torch.tensor([[13, 14, 3], [15, 3, 0]])
    response_mask = torch.tensor([[True, True, True], [True, True, False]])
    shapes = []
    model.lm_head.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))

    class NoLogitsToKeep(torch.nn.Module):  # a causal LM whose forward does not take logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, position_ids, use_cache, past_key_values=None):
            return self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                past_key_values=past_key_values,
            )

    with torch.no_grad():
        kept = response_logprobs(model, prompt_ids, prompt_mask, response_ids, response_mask)
        full = response_logprobs(NoLogitsToKeep(model), prompt_ids, prompt_mask, response_ids, response_mask)
    assert shapes == [(2, 4, model.config.vocab_size), (2, 9, model.config.vocab_size)]  # 3 + 1 of 6 + 3 positions
    torch.testing.assert_close(kept, full)
    assert kept[1, 2] == 0 and bool((kept[response_mask] < 0).all())
    # The shared-prompt pass: the prompts' last logits only, or all of them when the model cannot be asked to.
    from lit_rlhf.rollout import shared_prompt_response_logprobs

    shapes.clear()
    with torch.no_grad():
        args = (prompt_ids, prompt_mask, torch.tensor([0, 1]), response_ids, response_mask)
        shared = shared_prompt_response_logprobs(model, *args)
        shared_full = shared_prompt_response_logprobs(NoLogitsToKeep(model), *args)
    assert [shape[1] for shape in shapes] == [1, 3, 6, 3]  # prompt pass, response pass; twice
    torch.testing.assert_close(shared, kept, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared_full, kept, atol=1e-5, rtol=1e-5)
    # Packed without KV cache: the LM head sees one position per real response token (3 + 2).
    shapes.clear()
    with torch.no_grad():
        packed = shared_prompt_response_logprobs(model, *args, padding_free=True)
    assert shapes == [(1, 5, model.config.vocab_size)]
    torch.testing.assert_close(packed, kept, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_padding_free_logprobs_values_and_gradients_equal_padded_rows(kind, tmp_path, word_tokenizer):
    model, tokenizer = tiny_causal_lm(kind, tmp_path)
    model.eval()  # dropout off; gradients still flow
    prompt_ids, prompt_mask = pad_left([tokenizer(p)["input_ids"] for p in PROMPTS], tokenizer.pad_token_id)
    torch.manual_seed(0)
    response_mask = torch.arange(5)[None, :] < torch.tensor([3, 1, 5])[:, None]
    response_ids = torch.randint(3, 40, (3, 5)) * response_mask + tokenizer.pad_token_id * ~response_mask
    args = (prompt_ids, prompt_mask, response_ids, response_mask)
    shapes = []
    model.get_output_embeddings().register_forward_hook(lambda module, a, out: shapes.append(tuple(out.shape)))

    def run(padding_free: bool):
        logprobs, entropy = response_logprobs(
            model, *args, temperature=0.7, with_entropy=True, padding_free=padding_free
        )
        return weighted_backward(model, logprobs, entropy)

    packed = run(True)
    assert shapes[-1][:2] == (1, 9)  # the logits of the 3 + 1 + 5 real response tokens only
    padded = run(False)
    packed_logprobs, padded_logprobs = packed[0], padded[0]
    assert bool((packed_logprobs[response_mask] < 0).all()) and bool((packed_logprobs[~response_mask] == 0).all())
    assert_same_logprobs_and_gradients(packed, padded)

    class NoLogitsToKeep(torch.nn.Module):  # takes extra keyword arguments, but not logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, position_ids, use_cache, **kwargs):
            return self.inner(input_ids=input_ids, position_ids=position_ids, use_cache=use_cache, **kwargs)

    with torch.no_grad():
        all_logits = response_logprobs(NoLogitsToKeep(model), *args, temperature=0.7, padding_free=True)
    torch.testing.assert_close(all_logits, padded_logprobs, atol=1e-5, rtol=1e-5)
    if kind == "llama":  # the critic: a sequence-classification model of the same body
        critic = load_reward_model("tiny-arithmetic", word_tokenizer, config_overrides=TINY_MODEL_CONFIG).eval()
        with torch.no_grad():
            packed_values = response_values(critic, *args, padding_free=True)
            padded_values = response_values(critic, *args)
        torch.testing.assert_close(packed_values, padded_values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("share_prompt", [False, True])
def test_grouped_logprobs_of_several_samples_per_prompt_equal_repeated_rows(share_prompt, word_tokenizer):
    from lit_rlhf.functional.padding import unpadded
    from lit_rlhf.rollout import grouped_response_logprobs

    torch.manual_seed(0)
    model = build_tiny_llama(word_tokenizer, TINY_MODEL_CONFIG).eval()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    ids, mask = pad_left(prompts, word_tokenizer.pad_token_id)
    assert unpadded(ids, mask) == prompts
    responses = torch.randint(4, 40, (6, 4))
    response_mask = torch.ones_like(responses, dtype=torch.bool)
    response_mask[1, 2:] = False
    with torch.no_grad():
        got = grouped_response_logprobs(model, ids, mask, 2, responses, response_mask, 0.7, share_prompt=share_prompt)
        want = response_logprobs(
            model, ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0), responses, response_mask, 0.7
        )
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
