"""Evaluation of a policy against a reference: pairwise judges and the win rate (judged in both orders)."""

from lit_rlhf.evaluation.compare import (
    PairRecord,
    WinRateResult,
    compare_responses,
    encode_prompts,
    greedy_responses,
    judge_both_orders,
    win_rate,
)
from lit_rlhf.evaluation.judges import (
    DEFAULT_PAIRWISE_TEMPLATE,
    JudgeError,
    LLMPairwiseJudge,
    PairwiseJudge,
    RewardModelJudge,
    Verdict,
    parse_verdict,
)

__all__ = [
    "DEFAULT_PAIRWISE_TEMPLATE",
    "JudgeError",
    "LLMPairwiseJudge",
    "PairRecord",
    "PairwiseJudge",
    "RewardModelJudge",
    "Verdict",
    "WinRateResult",
    "compare_responses",
    "encode_prompts",
    "greedy_responses",
    "judge_both_orders",
    "parse_verdict",
    "win_rate",
]
