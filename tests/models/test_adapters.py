"""LoRA adapters on the tiny Llama: the reference is the base exactly, exports reload, bad configs are refused."""

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaForSequenceClassification

from lit_rlhf.errors import ConfigError
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.adapters import AdaptersDisabled, apply_adapters, save_merged_and_adapter
from lit_rlhf.models.tiny import build_tiny_llama
from lit_rlhf.rollout import response_logprobs
from tests.conftest import TINY_MODEL_CONFIG

OPTION = "model.init_args.peft_config"


@pytest.fixture
def tokenizer():
    return build_word_tokenizer()


def tiny(tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    return build_tiny_llama(tokenizer, TINY_MODEL_CONFIG).eval()


def trained(model) -> None:
    """Move the adapters away from their identity start (B = 0)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)


def test_only_adapters_train_and_the_reference_is_the_base_model_exactly(tokenizer):
    base = tiny(tokenizer)
    untouched = tiny(tokenizer)
    adapted = apply_adapters(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), OPTION)
    assert all("lora_" in name for name, p in adapted.named_parameters() if p.requires_grad)
    trained(adapted)
    prompt = torch.randint(4, len(tokenizer), (3, 5))
    response = torch.randint(4, len(tokenizer), (3, 4))
    ones = torch.ones_like
    args = (prompt, ones(prompt), response, ones(response, dtype=torch.bool), 1.0)
    reference = response_logprobs(AdaptersDisabled(adapted), *args)
    assert torch.equal(reference, response_logprobs(untouched, *args))  # the base's log-probs, bit for bit
    assert not torch.allclose(response_logprobs(adapted, *args), reference)
    adapted.train()
    AdaptersDisabled(adapted)(input_ids=prompt)
    assert adapted.training  # the reference pass leaves the policy's mode as it was


def test_merged_export_reloads_with_transformers_and_the_adapter_with_peft(tokenizer, tmp_path):
    adapted = apply_adapters(tiny(tokenizer), LoraConfig(r=4, lora_alpha=16, target_modules="all-linear"), OPTION)
    trained(adapted)
    adapted.eval()
    ids = torch.randint(4, len(tokenizer), (2, 7))
    expected = adapted(input_ids=ids).logits
    save_merged_and_adapter(adapted, str(tmp_path / "hf"), str(tmp_path / "hf_adapter"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)
    reloaded = PeftModel.from_pretrained(tiny(tokenizer), tmp_path / "hf_adapter").eval()
    assert torch.equal(reloaded(input_ids=ids).logits, expected)


def test_a_reward_model_trains_its_score_head_in_full_and_exports_it(tokenizer, tmp_path):
    config = tiny(tokenizer).config
    config = config.__class__.from_dict({**config.to_dict(), "num_labels": 1, "id2label": {0: "LABEL_0"}})
    torch.manual_seed(1)
    scorer = apply_adapters(
        LlamaForSequenceClassification(config), LoraConfig(r=2, target_modules="all-linear"), OPTION, ("score",)
    )
    trainable = [name for name, p in scorer.named_parameters() if p.requires_grad and "lora_" not in name]
    assert trainable == ["score.weight"]
    assert not [name for name in dict(scorer.named_modules()) if name.startswith("score.")]  # no adapters on the head
    trained(scorer)
    scorer.eval()
    ids = torch.randint(4, len(tokenizer), (2, 6))
    expected = scorer(input_ids=ids).logits
    save_merged_and_adapter(scorer, str(tmp_path / "hf"), str(tmp_path / "hf_adapter"))
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (LoraConfig(target_modules=["no_such_layer"]), "Target modules {'no_such_layer'} not found"),
        (LoraConfig(target_modules=["embed_tokens"]), "LoRA on Embedding layers is not supported"),
        (LoraConfig(target_modules="all-linear", use_dora=True), "use_dora is not supported"),
        (LoraConfig(target_modules="all-linear", init_lora_weights="pissa"), "init_lora_weights 'pissa' is not"),
        (LoraConfig(target_modules="all-linear", init_lora_weights="olora"), "init_lora_weights 'olora' is not"),
    ],
)
def test_adapters_that_cannot_be_trained_or_merged_are_refused_naming_the_option(tokenizer, config, message):
    with pytest.raises(ConfigError, match=f"^{OPTION}.*{message}"):
        apply_adapters(tiny(tokenizer), config, OPTION)


def test_the_adapter_of_a_reward_model_reloads_with_peft_with_its_head(tokenizer, tmp_path):
    config = tiny(tokenizer).config
    config = config.__class__.from_dict({**config.to_dict(), "num_labels": 1, "id2label": {0: "LABEL_0"}})
    torch.manual_seed(1)
    base = LlamaForSequenceClassification(config)
    base.save_pretrained(tmp_path / "base")
    scorer = apply_adapters(base, LoraConfig(r=2, target_modules="all-linear"), OPTION, ("score",))
    trained(scorer)
    scorer.eval()
    ids = torch.randint(4, len(tokenizer), (2, 6))
    expected = scorer(input_ids=ids).logits
    save_merged_and_adapter(scorer, str(tmp_path / "hf"), str(tmp_path / "hf_adapter"), base=str(tmp_path / "base"))
    fresh = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "hf_adapter").eval()
    torch.testing.assert_close(reloaded(input_ids=ids).logits, expected, rtol=1e-6, atol=1e-6)


def test_gpt2_conv1d_layers_merge_transposed(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=40, n_positions=16))
    adapted = apply_adapters(model, LoraConfig(r=2, target_modules=["c_attn", "c_fc"]), OPTION)
    trained(adapted)
    adapted.eval()
    ids = torch.randint(0, 40, (2, 5))
    expected = adapted(input_ids=ids).logits
    save_merged_and_adapter(adapted, str(tmp_path / "hf"), str(tmp_path / "hf_adapter"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-5, atol=1e-5)


def test_a_config_that_is_not_lora_is_refused(tokenizer):
    from peft import IA3Config

    with pytest.raises(ConfigError, match="must be a peft.LoraConfig .*got IA3Config"):
        apply_adapters(tiny(tokenizer), IA3Config(target_modules=["q_proj"], feedforward_modules=[]), OPTION)
