"""4-bit base weights under LoRA (QLoRA) on CPU: the adapters train on the quantized base, the export merges them."""

import os

import pytest
import torch
from peft import LoraConfig

pytest.importorskip("bitsandbytes")

from lit_rlhf.models import build_word_tokenizer  # noqa: E402
from lit_rlhf.models.adapters import lora_layers, merged_state_dict  # noqa: E402
from lit_rlhf.models.tiny import build_tiny_llama  # noqa: E402
from lit_rlhf.modules import SFTModule  # noqa: E402
from tests.conftest import TINY_MODEL_CONFIG  # noqa: E402


@pytest.fixture
def qlora(tmp_path):
    tokenizer = build_word_tokenizer()
    policy_dir = str(tmp_path / "base")  # 4-bit blocks of 64 values: layers at least that wide
    build_tiny_llama(tokenizer, {**TINY_MODEL_CONFIG, "hidden_size": 64, "intermediate_size": 128}).save_pretrained(
        policy_dir
    )
    tokenizer.save_pretrained(policy_dir)
    return SFTModule(
        model_name_or_path=policy_dir, peft_config=LoraConfig(r=4, target_modules="all-linear"), load_in_4bit=True
    )


def test_adapters_sit_on_4_bit_layers_and_only_they_train(qlora):
    layers = lora_layers(qlora.model)
    assert layers and all(type(layer.base_layer).__name__ == "Linear4bit" for layer in layers.values())
    trained = [name for name, p in qlora.model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_" in name for name in trained)


def test_each_merged_weight_computes_what_its_4_bit_layer_with_adapter_computes(qlora, tmp_path):
    qlora.eval()
    with torch.no_grad():
        for param in qlora.model.parameters():
            if param.requires_grad:
                param.add_(0.05)
    merged = merged_state_dict(qlora.model)
    for name, layer in lora_layers(qlora.model).items():
        x = torch.randn(3, layer.base_layer.in_features)
        # bitsandbytes' own 4-bit matmul rounds a little differently from its dequantized weights
        torch.testing.assert_close(layer(x), x @ merged[f"{name}.weight"].T, rtol=1e-2, atol=1e-2)
    qlora.export_hf(str(tmp_path / "hf"))
    config = open(os.path.join(tmp_path, "hf", "config.json")).read()
    assert "quantization_config" not in config  # a plain model
    assert os.path.exists(tmp_path / "hf_adapter" / "adapter_model.safetensors")
