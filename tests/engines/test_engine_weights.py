"""What a sampling engine is fed (no vLLM needed): the plain model's names and whole tensors, LoRA merged without
touching the model; the log-probability gap; the engine option's checks."""

import pytest
import torch
from peft import LoraConfig

from lit_rlhf.engines import settings as engine_settings
from lit_rlhf.engines.weights import engine_weights
from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.logprobs import engine_logprob_gap
from lit_rlhf.models import build_word_tokenizer
from lit_rlhf.models.adapters import apply_adapters
from lit_rlhf.models.tiny import build_tiny_llama
from lit_rlhf.modules.checks import check_grpo_options, check_ppo_options, check_sampling_engine
from tests.conftest import TINY_MODEL_CONFIG


def _tiny():
    return build_tiny_llama(build_word_tokenizer(), TINY_MODEL_CONFIG).eval()


def test_a_plain_model_is_fed_its_own_state_dict():
    model = _tiny()
    fed = dict(engine_weights(model))
    state = model.state_dict()
    assert list(fed) == list(state)
    assert all(torch.equal(fed[k], v) for k, v in state.items())


def test_lora_is_fed_merged_under_the_plain_names_and_the_model_is_untouched():
    torch.manual_seed(0)
    plain = _tiny()
    adapted = _tiny()
    adapted.load_state_dict(plain.state_dict())
    apply_adapters(adapted, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), "peft_config")
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # B starts at zero: make the adapters change the outputs
    before = {k: v.clone() for k, v in adapted.state_dict().items()}
    fed = dict(engine_weights(adapted))
    assert set(fed) == set(plain.state_dict())  # no lora_A/lora_B/base_layer names
    assert all(torch.equal(v, before[k]) for k, v in adapted.state_dict().items())  # merged into copies only
    plain.load_state_dict(fed)
    ids = torch.randint(4, 40, (3, 7))
    torch.testing.assert_close(plain(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(
        fed["model.layers.0.self_attn.q_proj.weight"], before["model.layers.0.self_attn.q_proj.base_layer.weight"]
    )


def test_logprob_gap_by_hand():
    engine = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]])
    policy = torch.tensor([[-1.5, -2.0, -1.0], [-0.25, -0.5, 0.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    stats = engine_logprob_gap(engine, policy, mask)
    # |gaps| on the mask: 0.5, 0, 0.25, 0, 9 -> mean 9.75 / 5, max 9 (the masked 2.0 is left out).
    assert stats["engine/logprob_gap_mean"].item() == pytest.approx(1.95)
    assert stats["engine/logprob_gap_max"].item() == pytest.approx(9.0)


def test_vllm_without_vllm_installed_names_the_install_command(monkeypatch):
    monkeypatch.setattr(engine_settings, "vllm_available", lambda: False)
    with pytest.raises(ConfigError, match=r"sampling_engine vllm needs vLLM.*pip install 'lit_rlhf\[vllm\]'"):
        check_sampling_engine({"sampling_engine": "vllm"})
    from lit_rlhf.engines.vllm_engine import VLLMEngine

    with pytest.raises(ConfigError, match="pip install"):
        VLLMEngine.for_policy(_tiny())


@pytest.mark.parametrize(
    "values, match",
    [
        ({"sampling_engine": "sglang"}, "sampling_engine must be one of"),
        ({"sampling_engine": "generate", "vllm": {"kv_cache_gib": 1}}, "vllm sets up the vLLM engine"),
        ({"sampling_engine": "vllm", "load_in_4bit": True}, "cannot sample from a 4-bit policy"),
        ({"sampling_engine": "vllm", "vllm": {"gpu_memory_utilization": 1.5}}, "vllm.gpu_memory_utilization"),
        ({"sampling_engine": "vllm", "vllm": {"kv_cache_gib": 0}}, "vllm.kv_cache_gib"),
    ],
)
def test_engine_options_are_checked_before_anything_loads(values, match):
    with pytest.raises(ConfigError, match=match):
        check_sampling_engine(values)
    with pytest.raises(ConfigError, match=match):
        check_ppo_options(values)
    with pytest.raises(ConfigError, match=match):
        check_grpo_options({**values, "rewards": [object()]})


def test_an_engine_length_shorter_than_prompt_and_answer_is_refused_at_setup(monkeypatch, policy_dir, tmp_path):
    import lightning as L

    from lit_rlhf.data import ArithmeticDataModule
    from lit_rlhf.engines.settings import VLLMSettings
    from lit_rlhf.modules import GRPOModule
    from lit_rlhf.rewards import ArithmeticVerifierReward

    monkeypatch.setattr(engine_settings, "vllm_available", lambda: True)  # the check runs before any engine exists
    module = GRPOModule(
        [ArithmeticVerifierReward()],
        policy_name_or_path=policy_dir,
        max_new_tokens=8,
        sampling_engine="vllm",
        vllm=VLLMSettings(max_model_len=16),
    )
    data = ArithmeticDataModule(format="prompt", num_train=16, num_val=8, batch_size=4, max_length=64)
    trainer = L.Trainer(max_steps=1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"max_new_tokens=8 do not fit model.init_args.vllm.max_model_len=16"):
        trainer.fit(module, data)


def test_the_settings_a_checkpoint_holds_rebuild_the_module(monkeypatch, policy_dir):
    """``load_from_checkpoint`` passes the saved hyperparameters: ``vllm`` as plain values."""
    from lit_rlhf.engines.settings import VLLMSettings
    from lit_rlhf.modules import GRPOModule
    from lit_rlhf.rewards import ArithmeticVerifierReward

    monkeypatch.setattr(engine_settings, "vllm_available", lambda: True)
    options = {"policy_name_or_path": policy_dir, "sampling_engine": "vllm"}
    module = GRPOModule([ArithmeticVerifierReward()], vllm=VLLMSettings(kv_cache_gib=0.5), **options)
    assert module.hparams["vllm"]["kv_cache_gib"] == 0.5
    again = GRPOModule([ArithmeticVerifierReward()], vllm=dict(module.hparams["vllm"]), **options)
    assert again.vllm_settings == module.vllm_settings
