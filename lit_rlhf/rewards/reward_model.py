"""A learned reward model (``AutoModelForSequenceClassification``, one label) as a frozen reward source."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from lit_rlhf.data.tokenization import encode_prompt
from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.padding import pad_right
from lit_rlhf.models.loading import load_tokenizer
from lit_rlhf.models.scoring import check_reward_normalization, load_reward_model, reward_normalization, sequence_scores
from lit_rlhf.rewards.base import RewardSource

log = logging.getLogger(__name__)


class RewardModelReward(RewardSource):
    """Score completions with a frozen reward model, e.g. the export of :class:`~lit_rlhf.modules.RewardModule`.

    The reward model reads *text*: each prompt and completion is re-tokenized with the reward model's own
    tokenizer, so a policy and a reward model with different tokenizers work together (the cost is one
    tokenization per sample). A completion that ended with EOS gets the reward model's EOS appended, as in
    training, so the score is read where the reward model learned to read it; a truncated one does not.

    Args:
        model_name_or_path: reward-model folder or hub name: a sequence classifier with one label (a causal LM is
            refused: its score head would be random).
        tokenizer_name_or_path: where its tokenizer lives if not beside it.
        normalize: subtract the mean and divide by the std recorded in the export's
            ``config.reward_normalization`` (a warning says when there is none and raw scores are used; a recorded
            std that is zero or not finite is refused).
        batch_size: sequences per forward pass.
        max_length: longest prompt + completion in reward-model tokens; longer ones keep their end.
        use_chat_template: wrap the prompt in the reward model tokenizer's chat template (as in its training).
        system_prompt: optional system message for that template.
        dtype: ``float32``, ``bfloat16`` or ``float16`` weights.
        trust_remote_code: passed to ``from_pretrained``.
        attn_implementation: attention kernel (``eager``, ``sdpa``, ...); ``None`` lets transformers choose.
        name: name in logs (default ``reward_model``).
    """

    name = "reward_model"

    def __init__(
        self,
        model_name_or_path: str,
        tokenizer_name_or_path: str | None = None,
        normalize: bool = True,
        batch_size: int = 64,
        max_length: int = 1024,
        use_chat_template: bool = False,
        system_prompt: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        for option, value in (("batch_size", batch_size), ("max_length", max_length)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"{type(self).__name__} ({model_name_or_path}): init_args.{option} must be >= 1, got {value!r}; "
                    "set it on this reward source in the config file"
                )
        self.tokenizer = load_tokenizer(
            tokenizer_name_or_path or model_name_or_path, pad_with_eos=True, trust_remote_code=trust_remote_code
        )
        self.model = load_reward_model(
            model_name_or_path,
            self.tokenizer,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            attn_implementation=attn_implementation,
            require_score_head=True,
        ).eval()
        self.model.requires_grad_(False)
        self.batch_size = batch_size
        self.max_length = max_length
        self.use_chat_template = use_chat_template
        self.system_prompt = system_prompt
        stats = reward_normalization(self.model) if normalize else None
        if normalize and stats is None:
            log.warning("%s has no reward_normalization in its config; using raw scores", model_name_or_path)
        if stats is not None:
            check_reward_normalization(stats, model_name_or_path)
        self.mean = float(stats["mean"]) if stats else 0.0
        self.std = float(stats["std"]) if stats else 1.0

    def models(self) -> list[torch.nn.Module]:
        return [self.model]

    def to(self, device: torch.device | str) -> RewardModelReward:
        """Move the reward model (e.g. to the policy's device)."""
        self.model.to(device)
        return self

    def encode(self, prompt: str, completion: str, finished: bool) -> list[int]:
        """Reward-model ids of one sample: prompt, completion, and EOS if the completion ended with one."""
        ids = encode_prompt(self.tokenizer, prompt, self.use_chat_template, self.system_prompt)
        ids = ids + self.tokenizer(completion, add_special_tokens=False)["input_ids"]
        if finished:
            ids.append(self.tokenizer.eos_token_id)
        return ids[-self.max_length :]

    @torch.no_grad()
    def score(
        self,
        prompts: Sequence[str],
        completions: Sequence[str],
        rows: Sequence[dict[str, Any]],
        finished: Sequence[bool] | None = None,
    ) -> torch.Tensor:
        finished = [True] * len(prompts) if finished is None else list(finished)
        sequences = [self.encode(p, c, f) for p, c, f in zip(prompts, completions, finished)]
        device = next(self.model.parameters()).device
        scores = []
        for start in range(0, len(sequences), self.batch_size):
            ids, mask = pad_right(sequences[start : start + self.batch_size], self.tokenizer.pad_token_id)
            scores.append(sequence_scores(self.model, ids.to(device), mask.to(device)).cpu())
        return (torch.cat(scores) - self.mean) / self.std
