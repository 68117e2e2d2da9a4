import logging

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from lit_rlhf.models import TINY_ARITHMETIC, ModelLoadError, load_causal_lm, load_tokenizer
from tests.conftest import TINY_MODEL_CONFIG


def test_builtin_model_and_tokenizer_need_no_download():
    tok = load_tokenizer(TINY_ARITHMETIC)
    model = load_causal_lm(TINY_ARITHMETIC, tok, config_overrides=TINY_MODEL_CONFIG)
    assert model.config.vocab_size == len(tok)
    assert model.config.pad_token_id == tok.pad_token_id
    assert tok.decode(tok("make a series 5 7")["input_ids"]) == "make a series 5 7"


def test_builtin_model_takes_a_larger_vocabulary_not_a_smaller_one():
    tok = load_tokenizer(TINY_ARITHMETIC)
    model = load_causal_lm(TINY_ARITHMETIC, tok, config_overrides={**TINY_MODEL_CONFIG, "vocab_size": 1024})
    assert model.get_output_embeddings().out_features == 1024 and len(tok) < 1024
    with pytest.raises(ValueError, match=f"vocab_size 8 is smaller than the tokenizer's {len(tok)} tokens"):
        load_causal_lm(TINY_ARITHMETIC, tok, config_overrides={**TINY_MODEL_CONFIG, "vocab_size": 8})


def test_saved_builtin_round_trips_through_auto_classes(tmp_path):
    tok = load_tokenizer(TINY_ARITHMETIC)
    load_causal_lm(TINY_ARITHMETIC, tok, config_overrides=TINY_MODEL_CONFIG).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("Let 5")["input_ids"] == tok("Let 5")["input_ids"]
    assert isinstance(
        load_causal_lm(str(tmp_path), load_tokenizer(str(tmp_path))),
        AutoModelForCausalLM._model_mapping[type(AutoModelForCausalLM.from_pretrained(tmp_path).config)],
    )


def test_model_dir_without_tokenizer_is_a_clear_error(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="has no tokenizer files"):
        load_tokenizer(str(tmp_path))


def test_tokenizer_without_pad_token_gets_eos_and_says_so(tmp_path, word_tokenizer, caplog):
    word_tokenizer.pad_token = None
    word_tokenizer.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token == tok.eos_token == "<eos>"
    assert "has no pad token" in caplog.text


def test_vocabulary_mismatch_is_refused(tmp_path, word_tokenizer):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="10 token embeddings but its tokenizer has"):
        load_causal_lm(str(tmp_path), word_tokenizer)


def test_not_a_model_is_a_clear_error(tmp_path, word_tokenizer):
    with pytest.raises(ModelLoadError, match="could not load a causal LM"):
        load_causal_lm(str(tmp_path), word_tokenizer)


def test_missing_local_export_says_to_run_the_earlier_stage(tmp_path):
    missing = str(tmp_path / "runs" / "arithmetic" / "sft" / "hf")
    with pytest.raises(ModelLoadError, match=r"sft/hf: no such model folder \(if it is the export of an earlier stage"):
        load_tokenizer(missing)


def test_attn_implementation_is_applied_and_computes_the_same_scores(tmp_path):
    import torch

    from lit_rlhf.models.scoring import load_reward_model

    tok = load_tokenizer(TINY_ARITHMETIC)
    torch.manual_seed(0)
    built = load_causal_lm(TINY_ARITHMETIC, tok, config_overrides=TINY_MODEL_CONFIG, attn_implementation="eager")
    assert built.config._attn_implementation == "eager"
    built.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    eager = load_causal_lm(str(tmp_path), tok, attn_implementation="eager").eval()
    sdpa = load_causal_lm(str(tmp_path), tok, attn_implementation="sdpa").eval()
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    batch = tok(["make a series 5 7", "Let 5"], padding=True, return_tensors="pt")  # left padding: masked keys
    with torch.no_grad():
        logits = [m(**batch).logits for m in (eager, sdpa)]
    keep = batch["attention_mask"].bool()
    assert torch.allclose(logits[0][keep], logits[1][keep], atol=1e-5)
    critic = load_reward_model(str(tmp_path), tok, attn_implementation="eager")
    assert critic.config._attn_implementation == "eager"
    assert load_reward_model(TINY_ARITHMETIC, tok, attn_implementation="eager").config._attn_implementation == "eager"
    with pytest.raises(ModelLoadError, match="attn_implementation 'no-such-kernel'"):
        load_causal_lm(TINY_ARITHMETIC, tok, config_overrides=TINY_MODEL_CONFIG, attn_implementation="no-such-kernel")
    with pytest.raises(ModelLoadError, match="no-such-kernel"):
        load_causal_lm(str(tmp_path), tok, attn_implementation="no-such-kernel")
