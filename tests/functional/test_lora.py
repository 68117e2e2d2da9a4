"""LoRA updates merged from a state dict, against hand-computed values."""

import torch

from lit_rlhf.functional.lora import lora_delta, merge_lora_state_dict


def test_the_delta_is_scaling_times_b_at_a_transposed_for_fan_in_fan_out():
    a = torch.tensor([[1.0, 2.0, 0.0]])  # r=1, in=3
    b = torch.tensor([[1.0], [-1.0]])  # out=2, r=1
    expected = torch.tensor([[2.0, 4.0, 0.0], [-2.0, -4.0, 0.0]])  # 2 * b @ a
    assert torch.equal(lora_delta(a, b, 2.0), expected)
    assert torch.equal(lora_delta(a, b, 2.0, fan_in_fan_out=True), expected.T)


def test_merging_renames_base_layers_adds_updates_and_keeps_the_trained_head_copy():
    state = {
        "base_model.model.proj.base_layer.weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "base_model.model.proj.base_layer.bias": torch.tensor([0.5, 0.5]),
        "base_model.model.proj.lora_A.default.weight": torch.tensor([[1.0, 1.0]]),
        "base_model.model.proj.lora_B.default.weight": torch.tensor([[0.5], [0.0]]),
        "base_model.model.score.original_module.weight": torch.tensor([[9.0, 9.0]]),
        "base_model.model.score.modules_to_save.default.weight": torch.tensor([[3.0, 4.0]]),
        "base_model.model.norm.weight": torch.tensor([1.0, 1.0]),
    }
    merged = merge_lora_state_dict(state, {"proj": 4.0})
    assert sorted(merged) == ["norm.weight", "proj.bias", "proj.weight", "score.weight"]
    # [[1, 0], [0, 1]] + 4 * [[0.5], [0]] @ [[1, 1]] = [[3, 2], [0, 1]]
    assert torch.equal(merged["proj.weight"], torch.tensor([[3.0, 2.0], [0.0, 1.0]]))
    assert torch.equal(merged["proj.bias"], torch.tensor([0.5, 0.5]))
    assert torch.equal(merged["score.weight"], torch.tensor([[3.0, 4.0]]))  # the trained copy, not the original


def test_merged_weights_keep_the_base_dtype():
    state = {
        "base_model.model.proj.base_layer.weight": torch.ones(2, 2, dtype=torch.bfloat16),
        "base_model.model.proj.lora_A.default.weight": torch.ones(1, 2, dtype=torch.bfloat16),
        "base_model.model.proj.lora_B.default.weight": torch.ones(2, 1, dtype=torch.bfloat16),
    }
    merged = merge_lora_state_dict(state, {"proj": 0.5})
    assert merged["proj.weight"].dtype == torch.bfloat16
    assert torch.equal(merged["proj.weight"].float(), torch.full((2, 2), 1.5))
