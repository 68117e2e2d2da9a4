"""LightningModules: one per training stage."""

from lit_rlhf.modules.base import CheckpointMismatchError, RLHFModule
from lit_rlhf.modules.dpo import DPOModule
from lit_rlhf.modules.grpo import GRPOModule
from lit_rlhf.modules.online_dpo import OnlineDPOModule
from lit_rlhf.modules.ppo import PPOModule
from lit_rlhf.modules.reward import RewardModule
from lit_rlhf.modules.sft import SFTModule

__all__ = [
    "CheckpointMismatchError",
    "DPOModule",
    "GRPOModule",
    "OnlineDPOModule",
    "PPOModule",
    "RLHFModule",
    "RewardModule",
    "SFTModule",
]
