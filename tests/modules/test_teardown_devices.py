"""After a run Lightning moves the module back to the CPU; what lit_rlhf keeps outside the module's parameters (the
frozen reference and reward model, the reward source, a win-rate judge and its reference) follows it at teardown.

No second device here, so the module is moved to ``meta`` by hand, as Lightning moves a GPU run's module to the CPU;
the H200 check in docs/benchmarks.md runs the same tests' trainings on CUDA.
"""

import torch

from lit_rlhf.callbacks.win_rate import WinRateCallback
from lit_rlhf.modules import PPOModule
from lit_rlhf.modules.grpo import GRPOModule
from lit_rlhf.rewards import ArithmeticVerifierReward
from tests.evaluation.toy_judges import AlwaysA


class RecordingReward(ArithmeticVerifierReward):
    """The verifier, recording where it was moved."""

    def to(self, device):
        self.device = torch.device(device)
        return self


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def test_frozen_models_and_reward_source_follow_the_module_at_teardown(policy_dir):
    reward = RecordingReward()
    module = PPOModule(reward, policy_name_or_path=policy_dir)
    assert device_of(module.reference) == torch.device("cpu")
    module.to("meta")  # where Lightning would have moved it
    module.teardown("fit")
    assert device_of(module.reference) == device_of(module.model) == reward.device == torch.device("meta")


def test_win_rate_judge_and_its_own_reference_follow_the_module_at_teardown(policy_dir):
    module = GRPOModule([ArithmeticVerifierReward()], policy_name_or_path=policy_dir, beta=0.0)  # no reference
    judge = AlwaysA()
    callback = WinRateCallback(judge, num_prompts=2)
    callback._reference = WinRateCallback.load_reference(module)  # as its first evaluation would load it
    module.to("meta")
    callback.teardown(trainer=None, pl_module=module, stage="fit")
    assert judge.device == torch.device("meta") and device_of(callback._reference) == torch.device("meta")
