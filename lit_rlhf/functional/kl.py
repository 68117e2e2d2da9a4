"""Per-token KL estimates between the policy and the reference model, and the KL-coefficient controllers."""

from __future__ import annotations

from typing import Any

import torch

KL_ESTIMATORS = ("k1", "k3")
"""Names accepted by :func:`kl_penalty`."""


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of ``KL(policy || reference)`` from the log-probabilities of the sampled tokens.

    With ``log r = ref_logp - logp`` (tokens sampled from the policy), after Schulman's "Approximating KL
    divergence":

    - ``"k1"``: ``logp - ref_logp = -log r``. Unbiased, but single tokens can be negative.
    - ``"k3"``: ``(r - 1) - log r``. Unbiased and never negative, with lower variance when the two are close.

    Padding positions are not masked here; the caller multiplies by the response mask.

    Args:
        logprobs: ``(batch, response_len)`` log-probabilities of the sampled tokens under the policy.
        ref_logprobs: ``(batch, response_len)`` the same tokens under the reference model.
        estimator: ``"k1"`` or ``"k3"``.

    Returns:
        ``(batch, response_len)`` float32 per-token KL estimates.

    Raises:
        ValueError: for an unknown ``estimator``.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL estimator {estimator!r}; expected one of {KL_ESTIMATORS}.")
    log_ratio = logprobs.float() - ref_logprobs.float()
    if estimator == "k1":
        return log_ratio
    # k3 with log r = -log_ratio: (r - 1) - log r; expm1 keeps precision when r is close to 1.
    return torch.expm1(-log_ratio) + log_ratio


class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. (2019), as in TRL.

    After each rollout batch the coefficient moves towards the value that keeps the measured KL at ``target``:
    ``error = clip(kl / target - 1, -0.2, 0.2)`` and ``value *= 1 + error * n_steps / horizon``.

    Attributes:
        value: the current coefficient.
        target: the KL (in nats per sequence, as measured by the caller) to aim for.
        horizon: how many samples it takes to move the coefficient by a factor of about ``e^0.2``.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}.")
        if target <= 0:
            raise ValueError(f"target must be > 0, got {target}.")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}.")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Moves ``value`` after a batch of ``n_steps`` samples whose mean KL was ``current_kl``.

        Args:
            current_kl: the measured KL (a float or a one-element tensor).
            n_steps: number of samples in the batch (the batch size summed over ranks).
        """
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """The coefficient, so that a resumed run goes on from it (store it in the Lightning checkpoint)."""
        return {"value": self.value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores ``value``; ``target`` and ``horizon`` stay as constructed (they are configuration)."""
        self.value = float(state_dict["value"])


class FixedKLController:
    """A constant KL coefficient with the interface of :class:`AdaptiveKLController`.

    Attributes:
        value: the coefficient.
    """

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}.")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, Any]:
        """The coefficient, for symmetry with :class:`AdaptiveKLController`."""
        return {"value": self.value}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores ``value``."""
        self.value = float(state_dict["value"])
