import pytest
import torch
from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

from lit_rlhf.data.collate import pad_left, pad_right
from lit_rlhf.models import load_tokenizer
from lit_rlhf.models.loading import ModelLoadError
from lit_rlhf.models.scoring import (
    ensure_distinct_pad,
    load_reward_model,
    packed_token_scores,
    sequence_scores,
    shared_prompt_token_scores,
    token_scores,
)
from tests.conftest import TINY_MODEL_CONFIG
from tests.helpers import save_tiny_gpt2

SEQUENCES = [[5, 6, 7, 3], [5, 8, 3], [9, 10, 11, 12, 13, 3]]  # 3 is the tiny tokenizer's EOS


@pytest.fixture
def reward_model(word_tokenizer):
    return load_reward_model("tiny-arithmetic", word_tokenizer, config_overrides=TINY_MODEL_CONFIG).eval()


def test_scores_match_hugging_face_pooling_and_do_not_depend_on_padding(reward_model, word_tokenizer):
    pad = word_tokenizer.pad_token_id
    assert (
        reward_model.config.num_labels == 1 and reward_model.config.pad_token_id == pad != word_tokenizer.eos_token_id
    )
    right_ids, right_mask = pad_right(SEQUENCES, pad)
    left_ids, left_mask = pad_left(SEQUENCES, pad)
    with torch.no_grad():
        ours_right = sequence_scores(reward_model, right_ids, right_mask)
        ours_left = sequence_scores(reward_model, left_ids, left_mask)
        hf = reward_model(input_ids=right_ids, attention_mask=right_mask).logits.squeeze(-1)
        alone = [sequence_scores(reward_model, torch.tensor([s]), torch.ones(1, len(s))) for s in SEQUENCES]
    assert ours_right.shape == (3,)
    torch.testing.assert_close(ours_right, hf)
    torch.testing.assert_close(ours_left, torch.cat(alone), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours_right, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_token_scores_at_the_last_token_are_the_sequence_scores(reward_model, word_tokenizer):
    ids, mask = pad_right(SEQUENCES, word_tokenizer.pad_token_id)
    with torch.no_grad():
        per_token = token_scores(reward_model, ids, mask)
        scores = sequence_scores(reward_model, ids, mask)
    assert per_token.shape == ids.shape
    torch.testing.assert_close(per_token[torch.arange(3), torch.tensor([3, 2, 5])], scores)


def test_a_causal_lm_export_loads_with_a_new_head(tmp_path):
    path = save_tiny_gpt2(str(tmp_path / "lm"), ["hello world", "good bye"])
    tokenizer = load_tokenizer(path, pad_with_eos=False)
    assert tokenizer.pad_token_id is None
    with pytest.raises(ModelLoadError, match="has no pad token; a reward model needs a pad token distinct from EOS"):
        ensure_distinct_pad(tokenizer, None, path)
    tokenizer.pad_token = tokenizer.eos_token
    with pytest.raises(ModelLoadError, match="pads with its EOS token"):
        ensure_distinct_pad(tokenizer, None, path)
    ensure_distinct_pad(tokenizer, "<|pad|>", path)
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    model = load_reward_model(path, tokenizer)
    assert isinstance(model, GPT2ForSequenceClassification) and model.config.num_labels == 1
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)  # resized for the new pad token
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.score.weight.abs().max() < 1.0  # the fresh head is small


def test_multi_label_classifier_is_refused(tmp_path, word_tokenizer):
    config = GPT2Config(vocab_size=200, n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=3)
    config.pad_token_id = 0
    GPT2ForSequenceClassification(config).save_pretrained(tmp_path / "clf")
    with pytest.raises(ModelLoadError, match="classifier with 3 labels; a reward model has exactly one"):
        load_reward_model(str(tmp_path / "clf"), word_tokenizer)


def test_reward_model_export_loads_back_unchanged(tmp_path, reward_model, word_tokenizer):
    reward_model.save_pretrained(tmp_path / "rm")
    again = load_reward_model(str(tmp_path / "rm"), word_tokenizer).eval()
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids, mask = pad_right(SEQUENCES, word_tokenizer.pad_token_id)
    with torch.no_grad():
        expected = sequence_scores(reward_model, ids, mask)
        torch.testing.assert_close(sequence_scores(again, ids, mask), expected)
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask).logits.squeeze(-1), expected)


PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
CHOSEN = [[20, 21, 22, 3], [23, 3], [24, 25, 26, 27, 3]]
REJECTED = [[20, 30, 3], [31, 32, 33, 3], [24, 25, 40, 41, 42, 43, 3]]


@pytest.mark.parametrize("padding_free", [False, True], ids=["kv-cache", "packed"])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_shared_prompt_scores_and_gradients_equal_full_sequences(family, padding_free, word_tokenizer, tmp_path):
    if family == "llama":
        model = load_reward_model("tiny-arithmetic", word_tokenizer, config_overrides=TINY_MODEL_CONFIG)
        pad = word_tokenizer.pad_token_id
    else:
        path = save_tiny_gpt2(str(tmp_path / "lm"), ["hello world", "good bye"])
        tokenizer = load_tokenizer(path, pad_with_eos=False)
        ensure_distinct_pad(tokenizer, "<|pad|>", path)
        model, pad = load_reward_model(path, tokenizer), tokenizer.pad_token_id
    model.eval()  # GPT-2's dropout off; gradients still flow
    torch.nn.init.normal_(model.score.weight)  # scores of order 1, so that differences would show
    vocab = model.get_input_embeddings().num_embeddings - 1  # the GPT-2 BPE is small: fold the ids into it
    prompts = [[i % vocab for i in p] for p in PROMPTS]
    responses = [[i % vocab for i in r] for r in CHOSEN + REJECTED]
    prompt_ids, prompt_mask = pad_left(prompts, pad)
    response_ids, response_mask = pad_right(responses, pad)
    shared = shared_prompt_token_scores(model, prompt_ids, prompt_mask, response_ids, response_mask, padding_free)
    full_ids, full_mask = pad_right([p + r for p, r in zip(prompts * 2, responses)], pad)
    full = token_scores(model, full_ids, full_mask)
    assert shared.shape == response_ids.shape
    for i, (prompt, response) in enumerate(zip(prompts * 2, responses)):
        torch.testing.assert_close(shared[i, : len(response)], full[i, len(prompt) : len(prompt) + len(response)])
    if padding_free:
        assert bool((shared[response_mask == 0] == 0).all())

    def grads(scores, mask):
        model.zero_grad()
        (scores * mask).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    full_region = torch.zeros_like(full_mask)
    for i, (prompt, response) in enumerate(zip(prompts * 2, responses)):
        full_region[i, len(prompt) : len(prompt) + len(response)] = 1
    shared_grads = grads(
        shared_prompt_token_scores(model, prompt_ids, prompt_mask, response_ids, response_mask, padding_free),
        response_mask,
    )
    full_grads = grads(token_scores(model, full_ids, full_mask), full_region)
    assert shared_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(shared_grads[name], full_grads[name], atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ValueError, match="not a whole number of blocks of 3 prompts"):
        shared_prompt_token_scores(model, prompt_ids, prompt_mask, response_ids[:5], response_mask[:5], padding_free)


@pytest.mark.parametrize("pad", [pad_left, pad_right], ids=["left", "right"])
def test_packed_token_scores_equal_token_scores_at_real_positions(reward_model, word_tokenizer, pad):
    ids, mask = pad(SEQUENCES, word_tokenizer.pad_token_id)
    packed = packed_token_scores(reward_model, ids, mask)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    full = token_scores(reward_model, ids, mask, positions)
    assert packed.shape == ids.shape
    torch.testing.assert_close(packed * mask, full * mask, atol=1e-5, rtol=1e-5)
    assert bool((packed[mask == 0] == 0).all())
