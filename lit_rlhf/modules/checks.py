"""Checks of the modules' option values, run at the start of each module's ``__init__``, before any model loads.

Each module has a table of :class:`Rule` per option (:data:`SFT_RULES`, :data:`REWARD_RULES`, :data:`PPO_RULES`,
:data:`GRPO_RULES`, :data:`ONLINE_DPO_RULES`); :func:`check_options` applies one to the values given and raises
:class:`~lit_rlhf.errors.ConfigError` for the first value out of range, naming its YAML key
(``model.init_args.clip_range``), the value given and the accepted range, in one line. The functions here are pure:
they import no model code and load nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from lit_rlhf.engines.settings import SAMPLING_ENGINES, require_vllm
from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.dpo import DPO_LOSS_TYPES
from lit_rlhf.functional.dpo_pairs import PAIR_RULES
from lit_rlhf.functional.grpo import LossAveraging
from lit_rlhf.functional.kl import KL_ESTIMATORS
from lit_rlhf.functional.schedules import ScheduleName

MODEL_PREFIX = "model.init_args."
"""Where the modules' options sit in a config (``model.init_args.clip_range``, ``--model.init_args.clip_range``)."""

DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""Weight dtypes the model loaders accept."""


def config_error(key: str, requirement: str, value: Any, why: str = "") -> ConfigError:
    """The one-line :class:`ConfigError` of option ``key``: ``<key> must be <requirement>, got <value> (<why>); ...``.

    Args:
        key: the option's full YAML key, e.g. ``model.init_args.clip_range``.
        requirement: the accepted values, e.g. ``> 0`` or ``in [0, 1]``.
        value: the value given.
        why: what the option does, when that explains the range.
    """
    reason = f" ({why})" if why else ""
    return ConfigError(f"{key} must be {requirement}, got {value!r}{reason}; set it in the config file or with --{key}")


def _number(value: Any) -> bool:
    """A real number (not a bool, not NaN or infinite)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Rule:
    """The accepted values of one option.

    Attributes:
        test: true for an accepted value (``None`` never reaches it when ``allow_none``).
        requirement: the accepted values in words, read after "must be" (``> 0``, ``an integer >= 1``).
        why: what the option does, when that explains the range (may be empty).
        allow_none: ``None`` (YAML ``null``) is accepted.
    """

    test: Callable[[Any], bool]
    requirement: str
    why: str = ""
    allow_none: bool = False

    def check(self, key: str, value: Any) -> None:
        """Raise :func:`config_error` for ``value`` of option ``key`` unless the rule accepts it."""
        if value is None and self.allow_none:
            return
        if value is None or not self.test(value):
            requirement = f"{self.requirement} or null" if self.allow_none else self.requirement
            raise config_error(key, requirement, value, self.why)


def greater_than(low: float, why: str = "", allow_none: bool = False) -> Rule:
    """A finite number ``> low``."""
    return Rule(lambda v: _number(v) and v > low, f"> {low:g}", why, allow_none)


def at_least(low: float, why: str = "", allow_none: bool = False) -> Rule:
    """A finite number ``>= low``."""
    return Rule(lambda v: _number(v) and v >= low, f">= {low:g}", why, allow_none)


def integer_at_least(low: int, why: str = "", allow_none: bool = False) -> Rule:
    """An integer ``>= low`` (the message says ``>= low``: the Lightning CLI refuses a non-integer first)."""
    return Rule(lambda v: _integer(v) and v >= low, f">= {low}", why, allow_none)


def between(low: float, high: float, *, low_open: bool = False, high_open: bool = False, why: str = "") -> Rule:
    """A finite number in ``[low, high]``; ``low_open``/``high_open`` exclude an end (``(0, 1]``)."""

    def test(v: Any) -> bool:
        if not _number(v):
            return False
        above = v > low if low_open else v >= low
        below = v < high if high_open else v <= high
        return above and below

    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    return Rule(test, f"in {bounds}", why)


def one_of(choices: Sequence[Any], why: str = "", allow_none: bool = False) -> Rule:
    """One of ``choices`` (listed in the message)."""
    names = ", ".join(str(c) for c in choices)
    return Rule(lambda v: v in tuple(choices), f"one of {names}", why, allow_none)


def finite(why: str = "", allow_none: bool = False) -> Rule:
    """Any finite number."""
    return Rule(_number, "a finite number", why, allow_none)


def betas_rule() -> Rule:
    """AdamW's two betas, each in ``[0, 1)``."""
    return Rule(
        lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
        "two numbers, each in [0, 1)",
        "AdamW's decay rates of the gradient mean and variance",
    )


def check_options(values: Mapping[str, Any], rules: Mapping[str, Rule], prefix: str = MODEL_PREFIX) -> None:
    """Apply ``rules`` to the options in ``values`` (options without a rule, or absent, are not checked).

    Args:
        values: option name -> value given (e.g. a module's ``__init__`` arguments).
        rules: option name -> :class:`Rule`.
        prefix: prepended to the option name in messages (``model.init_args.``).

    Raises:
        ConfigError: for the first value a rule refuses, naming ``prefix + name``, the value and the accepted range.
    """
    for name, rule in rules.items():
        if name in values:
            rule.check(prefix + name, values[name])


# -- the rules of each module ----------------------------------------------------------------------------------------

ADAMW_IMPLEMENTATIONS = ("for_loop", "foreach", "fused")
"""``AdamWImplementation`` of :mod:`lit_rlhf.modules.base` (named here so that this module imports no Lightning)."""
SCHEDULES = get_args(ScheduleName)

OPTIMIZER_RULES: dict[str, Rule] = {
    "weight_decay": at_least(0, "AdamW weight decay"),
    "betas": betas_rule(),
    "warmup_steps": integer_at_least(0, "steps of linear warmup"),
    "lr_schedule": one_of(SCHEDULES, "the learning-rate shape after warmup"),
    "min_lr_ratio": between(0, 1, why="floor of the decay as a fraction of the learning rate"),
    "adamw_implementation": one_of(ADAMW_IMPLEMENTATIONS, allow_none=True),
}
"""Options of the AdamW recipe every module shares (its learning rate(s) are named per module)."""

SAMPLING_RULES: dict[str, Rule] = {
    "max_new_tokens": integer_at_least(1, "the longest response, in tokens"),
    "temperature": greater_than(
        0, "sampling divides the logits by it and PPO/GRPO need the sampled log-probabilities; validation is greedy"
    ),
    "top_k": integer_at_least(0, "0 keeps every token"),
    "top_p": between(0, 1, low_open=True, why="nucleus sampling keeps this share of probability; 1 keeps every token"),
}
"""Sampling options of the online modules (rollouts)."""

SFT_RULES: dict[str, Rule] = {
    "dtype": one_of(DTYPE_NAMES, "weight dtype; keep null and set trainer.precision for mixed precision", True),
    "length_chunks": integer_at_least(1, "forward passes per training batch"),
    "learning_rate": greater_than(0, "peak AdamW learning rate"),
    **OPTIMIZER_RULES,
    "max_new_tokens": integer_at_least(1, "length of the validation answers, in tokens"),
    "generate_val_batches": integer_at_least(0, "validation batches to answer; null = all", allow_none=True),
    "num_logged_samples": integer_at_least(0, "rows of the sample table"),
}

REWARD_RULES: dict[str, Rule] = {
    "dtype": SFT_RULES["dtype"],
    "center_coef": at_least(0, "weight of the score-centring term"),
    "prefix_loss_coef": at_least(0, "weight of the prefix pair loss; 0 disables it"),
    "learning_rate": greater_than(0, "peak AdamW learning rate"),
    **OPTIMIZER_RULES,
    "num_logged_pairs": integer_at_least(0, "rows of the sample table"),
}

ONLINE_RULES: dict[str, Rule] = {
    **OPTIMIZER_RULES,
    **SAMPLING_RULES,
    "missing_eos_penalty": at_least(
        0, "subtracted from the score of a response cut by max_new_tokens; a negative one would reward it", True
    ),
    "gradient_accumulation_steps": integer_at_least(1, "micro-batches per minibatch"),
    "max_grad_norm": greater_than(0, "gradient clipping norm"),
    "num_minibatches": integer_at_least(1, "optimizer steps per pass over a batch"),
    "num_logged_samples": integer_at_least(0, "rows of the sample table"),
    "sampling_engine": one_of(SAMPLING_ENGINES, "what samples the rollouts: Hugging Face generate or vLLM"),
}

VLLM_RULES: dict[str, Rule] = {
    "gpu_memory_utilization": between(0, 1, low_open=True, why="share of the GPU's memory the engine takes"),
    "kv_cache_gib": greater_than(0, "the engine's KV cache in GiB; null = 1 on the CPU, from the GPU share", True),
    "max_model_len": integer_at_least(1, "longest prompt plus response; null = the policy's context", True),
    "max_num_seqs": integer_at_least(1, "most sequences the engine runs at once"),
}
"""Fields of ``vllm`` (:class:`~lit_rlhf.engines.settings.VLLMSettings`)."""


def check_sampling_engine(values: Mapping[str, Any]) -> None:
    """``sampling_engine: vllm`` needs vLLM installed and a policy it can load; ``vllm`` settings need it chosen.

    Raises:
        ConfigError: naming the option (and, for vLLM missing, the install command).
    """
    engine, settings = values.get("sampling_engine", "generate"), values.get("vllm")
    check_options({"sampling_engine": engine}, {"sampling_engine": ONLINE_RULES["sampling_engine"]})
    if engine != "vllm":
        if settings is not None:
            raise ConfigError(
                f"{MODEL_PREFIX}vllm sets up the vLLM engine, which this run does not use (sampling_engine "
                f"{engine!r}); set --{MODEL_PREFIX}sampling_engine vllm or remove vllm"
            )
        return
    if values.get("load_in_4bit"):
        raise ConfigError(
            f"{MODEL_PREFIX}sampling_engine vllm cannot sample from a 4-bit policy (load_in_4bit: the engine would "
            "need the dequantised merged weights at every rollout); use sampling_engine: generate with load_in_4bit"
        )
    if settings is not None:
        fields = settings if isinstance(settings, Mapping) else vars(settings)
        check_options(fields, VLLM_RULES, prefix=MODEL_PREFIX + "vllm.")
    require_vllm(MODEL_PREFIX + "sampling_engine")


PPO_RULES: dict[str, Rule] = {
    "actor_learning_rate": greater_than(0, "peak AdamW learning rate of the policy"),
    "critic_learning_rate": greater_than(0, "peak AdamW learning rate of the critic"),
    **ONLINE_RULES,
    "kl_coef": at_least(0, "coefficient of the per-token KL penalty; 0 = none"),
    "kl_estimator": one_of(KL_ESTIMATORS, "the per-token KL estimate"),
    "adaptive_kl_target": greater_than(0, "target KL of the adaptive controller; null keeps kl_coef fixed", True),
    "adaptive_kl_horizon": greater_than(0, "horizon of the adaptive KL controller, in samples"),
    "gamma": between(0, 1, why="GAE discount"),
    "lam": between(0, 1, why="GAE lambda"),
    "clip_range": greater_than(0, "the ratio is clipped to [1 - clip_range, 1 + clip_range]"),
    "clip_range_value": greater_than(0, "the value change is clipped to +-clip_range_value"),
    "ppo_epochs": integer_at_least(1, "passes over each rollout batch"),
}

GRPO_RULES: dict[str, Rule] = {
    "learning_rate": greater_than(0, "peak AdamW learning rate"),
    **ONLINE_RULES,
    "num_generations": integer_at_least(2, "samples per prompt: a group needs a baseline"),
    "beta": at_least(0, "coefficient of the k3 KL to the reference; 0 = none"),
    "loss_averaging": one_of(get_args(LossAveraging), "how the loss averages over tokens"),
    "clip_range": greater_than(0, "the ratio is clipped to [1 - clip_range, 1 + clip_range_high]"),
    "clip_range_high": greater_than(0, "upper clip of the ratio; null = clip_range", True),
    "num_iterations": integer_at_least(1, "passes over each generation batch"),
}


def check_sft_options(values: Mapping[str, Any]) -> None:
    """:data:`SFT_RULES` and the options that exclude each other (``padding_free`` with ``length_chunks > 1`` or
    ``gradient_checkpointing``).

    Raises:
        ConfigError: naming the first option out of range.
    """
    check_options(values, SFT_RULES)
    check_not_both(values, "padding_free", "gradient_checkpointing")
    if values.get("padding_free") and values.get("length_chunks", 1) > 1:
        raise ConfigError(
            f"{MODEL_PREFIX}padding_free and {MODEL_PREFIX}length_chunks={values['length_chunks']!r} exclude each "
            "other: choose padding_free or length_chunks > 1, not both (padding_free leaves no padding); set one of "
            "them in the config file"
        )


def check_reward_options(values: Mapping[str, Any]) -> None:
    """:data:`REWARD_RULES`, and ``padding_free`` without ``gradient_checkpointing``.

    Raises:
        ConfigError: naming the first option out of range.
    """
    check_options(values, REWARD_RULES)
    check_not_both(values, "padding_free", "gradient_checkpointing")
    if values.get("freeze_backbone") and values.get("peft_config") is not None:
        raise ConfigError(
            f"{MODEL_PREFIX}freeze_backbone and {MODEL_PREFIX}peft_config are both set, but LoRA trains adapters on "
            "the backbone; set freeze_backbone false (with peft_config the head trains in full and the backbone "
            "through its adapters) or peft_config null"
        )


def check_not_both(values: Mapping[str, Any], option: str, other: str = "gradient_checkpointing") -> None:
    """Refuse ``option`` and ``other`` both true (``padding_free`` runs outside what gradient checkpointing
    recomputes in the backward pass).

    Raises:
        ConfigError: naming both keys.
    """
    if values.get(option) and values.get(other):
        raise ConfigError(
            f"{MODEL_PREFIX}{option} and {MODEL_PREFIX}{other} are both true, but a padding-free forward cannot be "
            f"combined with gradient checkpointing (its recomputation would run outside the packed layout); set "
            f"--{MODEL_PREFIX}{option} false or --{MODEL_PREFIX}{other} false"
        )


def check_ppo_options(values: Mapping[str, Any]) -> None:
    """:data:`PPO_RULES`.

    Raises:
        ConfigError: naming the first option out of range.
    """
    check_options(values, PPO_RULES)
    check_sampling_engine(values)
    backbone = values.get("critic_backbone", "separate")
    if backbone not in ("separate", "shared"):
        raise config_error(f"{MODEL_PREFIX}critic_backbone", "separate or shared", backbone)
    if backbone == "shared" and values.get("peft_config") is None:
        raise ConfigError(
            f"{MODEL_PREFIX}critic_backbone shared puts the critic's own LoRA adapter on the policy's frozen backbone, "
            f"so it needs {MODEL_PREFIX}peft_config; set a peft_config or critic_backbone: separate"
        )


def check_grpo_options(values: Mapping[str, Any]) -> None:
    """:data:`GRPO_RULES`, at least one reward source and ``reward_weights`` (one finite weight per source).

    Raises:
        ConfigError: naming the first option out of range.
    """
    check_options(values, GRPO_RULES)
    check_sampling_engine(values)
    check_reward_sources(values)


def check_reward_sources(values: Mapping[str, Any]) -> None:
    """At least one reward source in ``rewards`` and ``reward_weights`` null or one finite weight per source.

    Raises:
        ConfigError: naming ``model.init_args.rewards`` or ``model.init_args.reward_weights``.
    """
    weights, rewards = values.get("reward_weights"), values.get("rewards")
    if isinstance(rewards, (list, tuple)) and not rewards:
        raise config_error(
            MODEL_PREFIX + "rewards", "a list of at least one reward source", list(rewards), "summed into each reward"
        )
    if weights is None:
        return
    key = MODEL_PREFIX + "reward_weights"
    if not isinstance(weights, (list, tuple)) or not all(_number(w) for w in weights):
        raise config_error(key, "a list of finite numbers or null", weights, "one weight per reward source")
    if isinstance(rewards, (list, tuple)) and len(weights) != len(rewards):
        raise config_error(
            key, f"a list of {len(rewards)} weights (one per entry of {MODEL_PREFIX}rewards) or null", list(weights)
        )


ONLINE_DPO_RULES: dict[str, Rule] = {
    "learning_rate": greater_than(0, "peak AdamW learning rate"),
    **ONLINE_RULES,
    "samples_per_prompt": integer_at_least(2, "answers per prompt: a pair needs two"),
    "pair_rule": one_of(PAIR_RULES, "how a prompt's answers are paired"),
    "beta": greater_than(0, "inverse temperature of DPO's implicit reward"),
    "loss_type": one_of(DPO_LOSS_TYPES, "the DPO loss variant"),
    "label_smoothing": between(0, 0.5, high_open=True, why="assumed rate of flipped preferences"),
    "simpo_gamma": finite("target reward margin of the simpo loss"),
    "num_epochs": integer_at_least(1, "passes over each round's pairs"),
}


def check_online_dpo_options(values: Mapping[str, Any]) -> None:
    """:data:`ONLINE_DPO_RULES` and the reward sources (:func:`check_reward_sources`).

    Raises:
        ConfigError: naming the first option out of range.
    """
    check_options(values, ONLINE_DPO_RULES)
    check_sampling_engine(values)
    check_reward_sources(values)
    check_label_smoothing(values)


DPO_RULES: dict[str, Rule] = {
    "dtype": SFT_RULES["dtype"],
    "beta": greater_than(0, "inverse temperature of DPO's implicit reward (the IPO regulariser for ipo)"),
    "loss_type": one_of(DPO_LOSS_TYPES, "the DPO loss variant"),
    "label_smoothing": between(0, 0.5, high_open=True, why="assumed rate of flipped preferences"),
    "simpo_gamma": finite("target reward margin of the simpo loss"),
    "learning_rate": greater_than(0, "peak AdamW learning rate"),
    **OPTIMIZER_RULES,
    "max_new_tokens": integer_at_least(1, "length of the validation answers, in tokens"),
    "generate_val_batches": integer_at_least(0, "validation batches to answer; null = all", allow_none=True),
    "num_logged_samples": integer_at_least(0, "rows of the sample table"),
}

SMOOTHED_DPO_LOSSES = ("sigmoid", "robust")
"""The DPO losses that read ``label_smoothing``."""


def check_label_smoothing(values: Mapping[str, Any]) -> None:
    """``label_smoothing`` above 0 only with a DPO loss that reads it (:data:`SMOOTHED_DPO_LOSSES`).

    Raises:
        ConfigError: naming both options.
    """
    loss_type, smoothing = values.get("loss_type", "sigmoid"), values.get("label_smoothing", 0.0)
    if smoothing and loss_type not in SMOOTHED_DPO_LOSSES:
        raise ConfigError(
            f"{MODEL_PREFIX}label_smoothing is {smoothing!r}, but loss_type {loss_type} does not read it (only "
            f"{' and '.join(SMOOTHED_DPO_LOSSES)} do); set --{MODEL_PREFIX}label_smoothing 0 or --{MODEL_PREFIX}"
            "loss_type sigmoid"
        )


def check_dpo_options(values: Mapping[str, Any]) -> None:
    """:data:`DPO_RULES`; ``label_smoothing`` only with a loss that reads it; ``reference_name_or_path`` not with
    ``peft_config`` (the reference is then the policy with its adapters off); ``padding_free`` without
    ``gradient_checkpointing``.

    Raises:
        ConfigError: naming the first option out of range.
    """
    check_options(values, DPO_RULES)
    check_not_both(values, "padding_free", "gradient_checkpointing")
    check_label_smoothing(values)
    if values.get("reference_name_or_path") is not None and values.get("peft_config") is not None:
        raise ConfigError(
            f"{MODEL_PREFIX}reference_name_or_path and {MODEL_PREFIX}peft_config are both set, but with LoRA the "
            f"reference is the policy with its adapters off; set --{MODEL_PREFIX}reference_name_or_path null or "
            f"--{MODEL_PREFIX}peft_config null"
        )


def check_minibatch_split(
    rows: int, num_minibatches: int, *, rows_name: str, batch_key: str = "data.init_args.batch_size"
) -> None:
    """Refuse more minibatches than the rows of a batch (each minibatch would not get a row of its own, and fewer
    optimizer steps than configured would run).

    Args:
        rows: rows of one training batch (PPO: its prompts; GRPO: ``batch_size * num_generations`` responses).
        num_minibatches: the configured ``num_minibatches``.
        rows_name: what a row is, for the message (``prompts``, ``responses``).
        batch_key: the option that sets the batch size.

    Raises:
        ConfigError: when ``num_minibatches > rows``.
    """
    if num_minibatches > rows:
        raise ConfigError(
            f"{MODEL_PREFIX}num_minibatches is {num_minibatches}, more than the {rows} {rows_name} of a training "
            f"batch ({batch_key}): each minibatch needs at least one row; lower --{MODEL_PREFIX}num_minibatches to "
            f"at most {rows} or raise --{batch_key}"
        )
