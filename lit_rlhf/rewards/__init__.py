"""Reward sources behind one interface: ``source(prompts, completions, rows, finished) -> (batch,) tensor``."""

from lit_rlhf.rewards.base import RewardError, RewardSource, check_rewards
from lit_rlhf.rewards.functions import ArithmeticVerifierReward, FunctionReward
from lit_rlhf.rewards.judge import LLMJudgeReward, parse_choice
from lit_rlhf.rewards.reward_model import RewardModelReward
from lit_rlhf.rewards.rules import AnswerMatchReward, LengthReward, RegexFormatReward, WeightedSumReward

__all__ = [
    "AnswerMatchReward",
    "ArithmeticVerifierReward",
    "FunctionReward",
    "LLMJudgeReward",
    "LengthReward",
    "RegexFormatReward",
    "RewardError",
    "RewardModelReward",
    "RewardSource",
    "WeightedSumReward",
    "check_rewards",
    "parse_choice",
]
