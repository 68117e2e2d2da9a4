"""Reward sources behind one interface: ``source(prompts, completions, rows, finished) -> (batch,) tensor``."""

from lit_rlhf.rewards.base import RewardError, RewardSource, check_rewards
from lit_rlhf.rewards.functions import ArithmeticVerifierReward, FunctionReward
from lit_rlhf.rewards.reward_model import RewardModelReward

__all__ = [
    "ArithmeticVerifierReward",
    "FunctionReward",
    "RewardError",
    "RewardModelReward",
    "RewardSource",
    "check_rewards",
]
