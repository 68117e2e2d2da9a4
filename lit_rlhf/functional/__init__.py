"""Pure-torch math for RLHF: losses, masking, log-probs, schedules.

Nothing in this package imports Lightning; every function is tested on hand-computed tensors.
"""

from lit_rlhf.functional.accumulation import micro_batch_weights
from lit_rlhf.functional.dpo import DPO_LOSS_TYPES, DPOStats, dpo_loss, dpo_losses, sequence_logps
from lit_rlhf.functional.dpo_pairs import PAIR_RULES, PreferencePairs, preference_pairs
from lit_rlhf.functional.grpo import GroupStats, GRPOLossStats, group_advantages, grpo_loss, minibatch_rows
from lit_rlhf.functional.kl import AdaptiveKLController, FixedKLController, kl_penalty
from lit_rlhf.functional.logprobs import logprobs_from_logits
from lit_rlhf.functional.masking import IGNORE_INDEX, mask_after_eos, masked_mean, masked_sum
from lit_rlhf.functional.padding import (
    PackedPromptRows,
    PackedRows,
    pack_prompt_responses,
    pack_rows,
    pad_left,
    pad_right,
    response_predictors,
)
from lit_rlhf.functional.ppo import (
    PolicyStats,
    ValueStats,
    entropy_from_logits,
    gae,
    masked_mean_var,
    masked_whiten,
    mean_var_from_sums,
    mean_var_to_sums,
    per_token_rewards,
    ppo_policy_loss,
    ppo_value_loss,
)
from lit_rlhf.functional.reward import RewardStats, bradley_terry_loss, last_token_index
from lit_rlhf.functional.schedules import warmup_decay_factor
from lit_rlhf.functional.sft import (
    SFTStats,
    num_target_tokens,
    packed_labels,
    packed_targets,
    sft_loss,
    supervised_window,
    token_cross_entropy,
)
from lit_rlhf.functional.winrate import WinRateStats, bootstrap_ci, normal_ci, order_scores, pair_scores, win_rate_stats

__all__ = [
    "DPO_LOSS_TYPES",
    "DPOStats",
    "PAIR_RULES",
    "PreferencePairs",
    "dpo_loss",
    "dpo_losses",
    "preference_pairs",
    "sequence_logps",
    "AdaptiveKLController",
    "FixedKLController",
    "GRPOLossStats",
    "GroupStats",
    "IGNORE_INDEX",
    "PackedPromptRows",
    "PackedRows",
    "PolicyStats",
    "RewardStats",
    "SFTStats",
    "ValueStats",
    "WinRateStats",
    "bootstrap_ci",
    "bradley_terry_loss",
    "entropy_from_logits",
    "gae",
    "group_advantages",
    "grpo_loss",
    "kl_penalty",
    "last_token_index",
    "logprobs_from_logits",
    "mask_after_eos",
    "masked_mean",
    "masked_mean_var",
    "mean_var_from_sums",
    "mean_var_to_sums",
    "micro_batch_weights",
    "minibatch_rows",
    "normal_ci",
    "num_target_tokens",
    "order_scores",
    "pack_prompt_responses",
    "pack_rows",
    "packed_labels",
    "packed_targets",
    "pad_left",
    "pad_right",
    "response_predictors",
    "pair_scores",
    "masked_sum",
    "masked_whiten",
    "per_token_rewards",
    "ppo_policy_loss",
    "ppo_value_loss",
    "sft_loss",
    "supervised_window",
    "token_cross_entropy",
    "warmup_decay_factor",
    "win_rate_stats",
]
