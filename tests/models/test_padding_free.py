import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from lit_rlhf.models.padding_free import PADDING_FREE_ATTENTION, packed_forward, packed_prompt_forward

LLAMA = {"vocab_size": 40, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}


def llama(attn_implementation="sdpa", **overrides):
    config = LlamaConfig(**{**LLAMA, "num_attention_heads": 4, "num_key_value_heads": 4, **overrides})
    return LlamaForCausalLM._from_config(config, attn_implementation=attn_implementation).eval()


def gpt2():
    config = GPT2Config(vocab_size=40, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    return GPT2LMHeadModel._from_config(config, attn_implementation="sdpa").eval()


def batch(padding_side):
    torch.manual_seed(1)
    lengths = [7, 3, 5, 1, 7]
    ids = torch.randint(3, 40, (len(lengths), 7))
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        if padding_side == "right":
            mask[row, :n] = 1
        else:
            mask[row, 7 - n :] = 1
    return ids, mask


def padded_logits(model, ids, mask):
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # what generation uses for left padding
    return model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits


@pytest.mark.parametrize(
    "make",
    [llama, lambda: llama("eager"), lambda: llama(num_key_value_heads=2), gpt2],
    ids=["llama-sdpa", "llama-eager", "llama-gqa", "gpt2"],
)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_packed_forward_equals_the_padded_batch_at_every_real_token(make, padding_side):
    model = make()
    ids, mask = batch(padding_side)
    implementation = model.config._attn_implementation
    outputs, layout = packed_forward(model, ids, mask)
    assert outputs.logits.shape == (1, int(mask.sum()), 40)
    assert model.config._attn_implementation == implementation  # restored after the pass
    expected = padded_logits(model, ids, mask).flatten(0, 1)[layout.token_index]
    torch.testing.assert_close(outputs.logits[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [lambda: llama(num_key_value_heads=2), gpt2], ids=["llama-gqa", "gpt2"])
def test_packed_forward_gives_the_gradients_of_the_padded_batch(make):
    model = make()
    ids, mask = batch("right")
    weights = torch.randn(int(mask.sum()), 40)
    outputs, layout = packed_forward(model, ids, mask)
    (outputs.logits[0] * weights).sum().backward()
    packed = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    (padded_logits(model, ids, mask).flatten(0, 1)[layout.token_index] * weights).sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(packed[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_forward_passes_forward_arguments_on():
    model = llama()
    ids, mask = batch("right")
    outputs, _ = packed_forward(model, ids, mask, logits_to_keep=3)
    assert outputs.logits.shape == (1, 3, 40)


def test_packed_forward_refuses_what_it_cannot_compute():
    model = llama()
    model.gradient_checkpointing_enable()
    ids, mask = batch("right")
    with pytest.raises(ValueError, match="gradient checkpointing"):
        packed_forward(model, ids, mask)
    windowed = MistralForCausalLM._from_config(
        MistralConfig(**LLAMA, num_attention_heads=4, num_key_value_heads=4, sliding_window=4),
        attn_implementation="sdpa",
    )
    with pytest.raises(ValueError, match="sliding window"):
        packed_forward(windowed, ids, mask)
    assert windowed.config._attn_implementation == "sdpa"  # restored after the error too
    short = mask.clone()
    short[:, 4:] = 0
    outputs, layout = packed_forward(windowed, ids, short)  # rows within the window are fine
    torch.testing.assert_close(
        outputs.logits[0], padded_logits(windowed, ids, short).flatten(0, 1)[layout.token_index], atol=1e-5, rtol=1e-5
    )


def test_the_registered_attention_refuses_calls_outside_a_packed_forward():
    model = llama()
    model.config._attn_implementation = PADDING_FREE_ATTENTION
    with pytest.raises(RuntimeError, match="packed_forward"):
        model(input_ids=torch.tensor([[3, 4, 5]]))


def test_a_model_whose_attention_ignores_the_interface_is_refused():
    class OwnAttention(torch.nn.Module):  # attends across the whole packed row: its outputs would be wrong
        def __init__(self):
            super().__init__()
            self.config = LlamaConfig(**LLAMA)
            self.embed = torch.nn.Embedding(40, 8)

        def forward(self, input_ids, position_ids=None, use_cache=False, **kwargs):
            hidden = self.embed(input_ids)
            return torch.nn.functional.scaled_dot_product_attention(hidden, hidden, hidden, is_causal=True)

    ids, mask = batch("right")
    with pytest.raises(ValueError, match="attention interface"):
        packed_forward(OwnAttention(), ids, mask)


@pytest.mark.parametrize(
    "make",
    [llama, lambda: llama("eager"), lambda: llama(num_key_value_heads=2), gpt2],
    ids=["llama-sdpa", "llama-eager", "llama-gqa", "gpt2"],
)
def test_packed_prompt_forward_equals_full_rows_with_gradients(make):
    model = make()
    torch.manual_seed(2)
    prompt_ids, prompt_mask = batch("left")  # five left-padded prompts of 7, 3, 5, 1 and 7 tokens
    prompt_index = torch.tensor([2, 0, 4, 1, 3, 0, 2])  # every prompt continued, some twice, in any order
    lengths = torch.tensor([4, 1, 3, 0, 2, 4, 1])  # one response empty
    response_mask = (torch.arange(4)[None] < lengths[:, None]).long()
    response_ids = torch.randint(3, 40, (7, 4))
    outputs, layout = packed_prompt_forward(model, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask)
    num_prompt_tokens = int(prompt_mask.sum())
    assert outputs.logits.shape == (1, num_prompt_tokens + int(lengths.sum()), 40)
    # The same rows in full: [prompt | response], left-padded prompt, positions from the first real token.
    full_ids = torch.cat([prompt_ids[prompt_index], response_ids], dim=1)
    full_mask = torch.cat([prompt_mask[prompt_index], response_mask], dim=1)
    full = padded_logits(model, full_ids, full_mask)
    expected = full[:, 7:].flatten(0, 1)[layout.response_token_index]
    got = outputs.logits[0, num_prompt_tokens:]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Prompt tokens: each prompt's last logits equal those of every full row that continues it.
    prompt_last = prompt_mask.sum(dim=1).cumsum(dim=0) - 1
    torch.testing.assert_close(outputs.logits[0, prompt_last[prompt_index]], full[:, 6], atol=1e-5, rtol=1e-5)
    weights = torch.randn_like(got)

    def grads(values):
        model.zero_grad()
        (values * weights).sum().backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    packed_grads = grads(got)
    outputs, _ = packed_prompt_forward(model, prompt_ids, prompt_mask, prompt_index, response_ids, response_mask)
    full_grads = grads(padded_logits(model, full_ids, full_mask)[:, 7:].flatten(0, 1)[layout.response_token_index])
    assert packed_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(packed_grads[name], full_grads[name], atol=1e-5, rtol=1e-4, msg=name)
