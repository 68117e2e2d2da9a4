"""LoRA adapters (``peft``) inside a Hugging Face model: add them, run the model without them, export merged or alone.

The adapters are injected in place (``peft.inject_adapter_in_model``): the model stays the same Hugging Face model
(its ``forward``, ``generate``, body and ``score`` head as lit_rlhf uses them), its targeted linear layers become LoRA
layers. Its own weights are frozen; only the adapters and the heads named as trained (a reward model's or critic's
``score``) train, so a module's checkpoints hold those alone, and the policy with its adapters switched off
(:func:`adapters_disabled`, :class:`AdaptersDisabled`) is the frozen reference of PPO and GRPO: no second copy.
"""

from __future__ import annotations

import contextlib
import copy
import enum
import json
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from peft import LoraConfig  # noqa: F401 (the type of the modules' peft_config option)

from lit_rlhf.errors import ConfigError
from lit_rlhf.functional.lora import merge_lora_state_dict

ADAPTER = "default"
"""The name ``peft`` gives the one adapter lit_rlhf adds."""

ADAPTER_PREFIX = "base_model.model."
"""What ``peft`` puts before the model's own keys in a saved adapter (``adapter_model.safetensors``)."""


def _lora_layer_class() -> type | None:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return None
    return LoraLayer


def lora_layers(model: torch.nn.Module) -> dict[str, Any]:
    """``{module name: LoRA layer}`` of every LoRA layer inside ``model``."""
    layer_class = _lora_layer_class()
    if layer_class is None:
        return {}
    return {name: module for name, module in model.named_modules() if isinstance(module, layer_class)}


def is_adapted(model: Any) -> bool:
    """Whether ``model`` holds LoRA layers."""
    return isinstance(model, torch.nn.Module) and bool(lora_layers(model))


def _import_peft() -> Any:
    try:
        import peft
    except ImportError as err:
        raise ConfigError("peft_config needs the peft package: pip install peft") from err
    return peft


def lora_settings(value: Any) -> dict[str, Any] | None:
    """A LoRA config as plain JSON data (for ``hparams``, checkpoints and comparing a resumed run's config).

    Args:
        value: ``None``, a ``peft.LoraConfig``, its YAML form (``{class_path: peft.LoraConfig, init_args: {...}}``)
            or the plain dict this function returns.

    Returns:
        ``None``, or the fields set to other values than ``LoraConfig()``'s (sets as sorted lists, enums as their
        values), leaving out those that say nothing about the adapters (peft's version, the base model's path).
    """
    if value is None:
        return None
    if hasattr(value, "as_dict") and callable(value.as_dict):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, Mapping) and "class_path" in value:
        value = {**(value.get("init_args") or {})}
    if isinstance(value, Mapping):
        try:
            value = _import_peft().LoraConfig(**{k: v for k, v in value.items() if k not in _NOT_SETTINGS})
        except TypeError as err:
            raise ConfigError(f"peft_config: {err}") from err
    fields = _plain(value.to_dict() if hasattr(value, "to_dict") else dict(value))
    defaults = _plain(_import_peft().LoraConfig().to_dict())
    return {
        key: v
        for key, v in sorted(fields.items())
        if key not in _NOT_SETTINGS and (key not in defaults or v != defaults[key])
    }


_NOT_SETTINGS = frozenset(
    {"peft_version", "base_model_name_or_path", "revision", "task_type", "peft_type", "auto_mapping"}
)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return _plain(value.to_dict())
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return _plain(dataclasses.asdict(value))
    return value


def apply_adapters(
    model: torch.nn.Module,
    peft_config: Any,
    option: str,
    trained_heads: tuple[str, ...] = (),
    adapter: str = ADAPTER,
) -> torch.nn.Module:
    """Inject LoRA adapters from ``peft_config`` into ``model``: its own weights frozen, the adapters and
    ``trained_heads`` trainable.

    Args:
        model: a Hugging Face model (causal LM or sequence classification).
        peft_config: a ``peft.LoraConfig`` (not modified).
        option: the option's name in messages (``model.init_args.peft_config``).
        trained_heads: top-level modules trained in full beside the adapters (``("score",)``: a reward model's or a
            critic's head); they get no adapters of their own.
        adapter: the adapter's name. A second adapter (another name) goes beside the first on the same layers,
            trained but not active: :func:`active_adapter` runs the model with it.

    Returns:
        ``model`` itself, with the adapters in place.

    Raises:
        ConfigError: not a ``LoraConfig``; DoRA; ``target_modules`` that match nothing; adapters on layers other than
            linear ones; a model type ``peft`` does not support.
    """
    peft = _import_peft()
    if not isinstance(peft_config, peft.LoraConfig):
        raise ConfigError(
            f"{option} must be a peft.LoraConfig (class_path: peft.LoraConfig), got {type(peft_config).__name__}"
        )
    if peft_config.use_dora:
        raise ConfigError(f"{option}.use_dora is not supported: lit_rlhf merges plain LoRA updates; set it to false")
    init = peft_config.init_lora_weights
    if isinstance(init, str) and init.lower() != "gaussian":  # pissa, olora, corda, eva, loftq rewrite the base
        raise ConfigError(
            f"{option}.init_lora_weights {init!r} is not supported: it rewrites the base weights, so the model with "
            "its adapters switched off would no longer be the one loaded (the reference); use true or gaussian"
        )
    if peft_config.modules_to_save:
        raise ConfigError(
            f"{option}.modules_to_save is not supported: lit_rlhf trains the score head of a reward model or critic "
            "in full by itself; remove modules_to_save"
        )
    if is_adapted(model) and adapter in getattr(model, "_lit_rlhf_lora", {ADAPTER: None}):
        raise ConfigError(f"{option}: the model already holds LoRA layers; load a model without adapters")
    config = copy.deepcopy(peft_config)
    if trained_heads:  # the heads train in full: no adapters on them (``all-linear`` would add some)
        excluded = config.exclude_modules
        if isinstance(excluded, str):  # a regular expression matched against whole module names
            config.exclude_modules = "|".join([f"(?:{excluded})", *trained_heads])
        else:
            config.exclude_modules = [*(excluded or []), *trained_heads]
    active = {name: layer._active_adapter for name, layer in lora_layers(model).items()}
    try:
        with warnings.catch_warnings():  # a second adapter beside the first is what is asked for
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            peft.inject_adapter_in_model(config, model, adapter_name=adapter)
    except ValueError as err:  # NoMatchingPeftModuleError, unsupported layer or model types
        message = " ".join(str(err).split())
        raise ConfigError(
            f"{option}: peft could not add adapters to {type(model).__name__}: {message} (target_modules names "
            "the model's linear layers, e.g. [q_proj, v_proj], or all-linear)"
        ) from err
    other = sorted({type(m).__name__ for m in lora_layers(model).values()} - {"Linear", "Linear4bit"})
    if other:
        raise ConfigError(
            f"{option}: LoRA on {', '.join(other)} layers is not supported (lit_rlhf merges adapters of linear layers "
            "only); restrict target_modules to linear layers"
        )
    for name, layer in lora_layers(model).items():  # the first adapter stays the active one
        if name in active:
            layer._active_adapter = active[name]
    for head in trained_heads:
        model.get_submodule(head).requires_grad_(True)
    for name, param in model.named_parameters():  # peft leaves an adapter that is not the active one frozen
        if f".lora_A.{adapter}." in name or f".lora_B.{adapter}." in name:
            param.requires_grad_(True)
    infos = getattr(model, "_lit_rlhf_lora", {})
    model._lit_rlhf_lora = {**infos, adapter: {"config": config, "trained_heads": tuple(trained_heads)}}
    return model


def frozen_weights_fingerprint(model: torch.nn.Module, samples: int = 256) -> str:
    """A short hash of ``model``'s frozen weights: names, shapes, dtypes and up to ``samples`` evenly spaced values of
    each (cheap on any model size). Adapters trained on one base and resumed on another show as a changed hash."""
    import hashlib

    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        if param.requires_grad:
            continue
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // samples)][:samples].to("cpu", torch.float32)
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def lora_scalings(model: torch.nn.Module, adapter: str = ADAPTER) -> dict[str, float]:
    """``{module name: scaling}`` of every LoRA layer of ``model``."""
    return {name: float(m.scaling[adapter]) for name, m in lora_layers(model).items() if adapter in m.scaling}


def lora_fan_in_fan_out(model: torch.nn.Module) -> dict[str, bool]:
    """``{module name: base weight stored (in, out)}`` of every LoRA layer (GPT-2's ``Conv1D`` layers are)."""
    return {name: bool(getattr(m, "fan_in_fan_out", False)) for name, m in lora_layers(model).items()}


@contextlib.contextmanager
def active_adapter(model: torch.nn.Module, adapter: str) -> Iterator[None]:
    """Run ``model`` with adapter ``adapter`` only inside the block (the others are present but not applied)."""
    layers = [layer for layer in lora_layers(model).values() if adapter in layer.lora_A]
    before = [layer._active_adapter for layer in layers]
    for layer in layers:
        layer._active_adapter = [adapter]
    try:
        yield
    finally:
        for layer, state in zip(layers, before):
            layer._active_adapter = state


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` without its adapters inside the block (the base model's outputs, exactly).

    Only the switch ``peft`` reads in ``forward`` is flipped; which parameters train is left as it is (``peft``'s own
    ``enable_adapters(False)`` would also freeze the adapters).
    """
    layers = list(lora_layers(model).values())
    before = [layer._disable_adapters for layer in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, state in zip(layers, before):
            layer._disable_adapters = state


def merged_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None, adapter: str = ADAPTER
) -> dict[str, torch.Tensor]:
    """The model's state dict without LoRA layers, adapter ``adapter`` merged into the base weights (any other
    adapter left out) (:func:`~lit_rlhf.functional.lora.merge_lora_state_dict`).

    Args:
        model: the adapted model.
        state: its full state dict when the caller has it (gathered from shards); default ``model.state_dict()``.
        adapter: the adapter merged.
    """
    if state is None:
        state = dequantized_state_dict(model) or model.state_dict()
    return merge_lora_state_dict(state, lora_scalings(model, adapter), adapter, lora_fan_in_fan_out(model))


def adapter_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor] | None = None, adapter: str = ADAPTER
) -> dict[str, torch.Tensor]:
    """Adapter ``adapter``'s weights keyed as ``peft`` saves them: ``base_model.model.<layer>.lora_A.weight`` ...,
    and each trained head's as ``base_model.model.<head>.weight`` (``peft`` restores it through
    ``modules_to_save``)."""
    state = model.state_dict() if state is None else state
    heads = model._lit_rlhf_lora[adapter]["trained_heads"]
    saved = {}
    for key, value in state.items():
        if f".lora_A.{adapter}." in key or f".lora_B.{adapter}." in key:
            saved[ADAPTER_PREFIX + key.replace(f".{adapter}.", ".")] = value
        elif any(key.startswith(f"{head}.") for head in heads):
            saved[ADAPTER_PREFIX + key] = value
    return saved


def save_adapter(
    model: torch.nn.Module,
    path: str,
    state: dict[str, torch.Tensor] | None = None,
    base: str | None = None,
    adapter: str = ADAPTER,
    heads: dict[str, torch.Tensor] | None = None,
) -> None:
    """``path``: the adapter alone, as ``peft`` writes one (``adapter_config.json``, ``adapter_model.safetensors``);
    ``PeftModel.from_pretrained(<base model>, path)`` loads it.

    Args:
        model: the adapted model.
        path: the folder.
        state: its full state dict (gathered from shards); default ``model.state_dict()``.
        base: where the base model was loaded from, recorded as ``base_model_name_or_path``.
        adapter: the adapter saved.
        heads: more fully trained weights held outside ``model`` (``{"score.weight": ...}``), saved as heads.
    """
    from safetensors.torch import save_file

    info = model._lit_rlhf_lora[adapter]
    config = copy.deepcopy(info["config"])
    head_names = [*info["trained_heads"], *sorted({key.split(".")[0] for key in heads or {}})]
    config.modules_to_save = head_names or None
    config.base_model_name_or_path = base
    config.inference_mode = True
    os.makedirs(path, exist_ok=True)
    config.save_pretrained(path)
    saved = {**adapter_state_dict(model, state, adapter), **{ADAPTER_PREFIX + k: v for k, v in (heads or {}).items()}}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in saved.items()}
    save_file(tensors, os.path.join(path, "adapter_model.safetensors"), metadata={"format": "pt"})


def save_merged_and_adapter(
    model: torch.nn.Module,
    path: str,
    adapter_path: str,
    state: dict[str, torch.Tensor] | None = None,
    base: str | None = None,
) -> None:
    """``path``: the merged model (``save_pretrained``, loadable by plain ``transformers``; 4-bit base weights are
    dequantised first); ``adapter_path``: the adapter alone (:func:`save_adapter`)."""
    dequantized = dequantized_state_dict(model) if state is None else None
    if state is None:
        state = dequantized or model.state_dict()
    os.makedirs(path, exist_ok=True)
    merged = merged_state_dict(model, state)
    if dequantized is None:
        model.save_pretrained(path, state_dict=merged)
    else:  # a 4-bit model saves itself quantized: the merged weights go into a plain copy of its architecture
        config = copy.deepcopy(model.config)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            plain = type(model)(config)
        plain.load_state_dict(merged, strict=False, assign=True)
        plain.tie_weights()
        plain.save_pretrained(path)
    config_path = os.path.join(path, "config.json")
    with open(config_path, encoding="utf-8") as f:  # the merged model is a plain one: no adapter, not 4-bit
        config = json.load(f)
    if any([config.pop("peft_config", None), config.pop("quantization_config", None)]):
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
    save_adapter(model, adapter_path, state, base)


class AdaptersDisabled(torch.nn.Module):
    """An adapted model seen with its adapters off and in eval mode: the frozen model it started from.

    Calls (``forward``, ``generate``) run the wrapped model inside :func:`adapters_disabled`; nothing is copied. Kept
    outside the LightningModule's state, like a loaded reference.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.adapted = model

    @property
    def config(self) -> Any:
        return self.adapted.config

    @property
    def base_model_prefix(self) -> str:
        return self.adapted.base_model_prefix

    @contextlib.contextmanager
    def _off(self) -> Iterator[None]:
        was_training = self.adapted.training
        self.adapted.eval()
        try:
            with adapters_disabled(self.adapted):
                yield
        finally:
            self.adapted.train(was_training)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> Any:
        with self._off():
            return self.adapted(
                input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep, **kwargs
            )

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self._off():
            return self.adapted.generate(*args, **kwargs)

    def train(self, mode: bool = True) -> AdaptersDisabled:
        return self  # always evaluated as the frozen base: the policy's mode is its own

    def requires_grad_(self, requires_grad: bool = True) -> AdaptersDisabled:
        return self  # the base weights are frozen already; the adapters belong to the policy

    def to(self, *args: Any, **kwargs: Any) -> AdaptersDisabled:
        return self  # it is the policy: the policy's device is its own


# -- 4-bit base weights (QLoRA) -----------------------------------------------------------------------------------


class QuantizedLoad:
    """How a module loads its base weights: ``load_kwargs`` for ``from_pretrained`` and ``prepare`` after loading
    (both no-ops without 4-bit weights)."""

    def __init__(self, load_kwargs: dict[str, Any] | None = None) -> None:
        self.load_kwargs = load_kwargs or {}

    def prepare(self, model: torch.nn.Module, gradient_checkpointing: bool) -> torch.nn.Module:
        return prepare_four_bit(model, gradient_checkpointing) if self.load_kwargs else model


def quantized_load(load_in_4bit: bool, name_or_path: str, peft_config: Any) -> QuantizedLoad:
    """The :class:`QuantizedLoad` of a module's ``load_in_4bit`` option (checked: :func:`four_bit_load_kwargs`)."""
    if not load_in_4bit:
        return QuantizedLoad()
    return QuantizedLoad(four_bit_load_kwargs(name_or_path, peft_config, "model.init_args.load_in_4bit"))


FOUR_BIT_MIN_VERSION = "0.48"
"""The first ``bitsandbytes`` whose 4-bit layers run on CPU as well as on CUDA."""


def four_bit_load_kwargs(name_or_path: str, peft_config: Any, option: str) -> dict[str, Any]:
    """``from_pretrained`` arguments that load the base weights in 4 bits (NF4 with double quantisation), for training
    LoRA adapters on them (QLoRA): on this process's CUDA device, computing in bf16 (fp16 where bf16 is missing),
    or, without CUDA, on the CPU, computing in float32.

    Args:
        name_or_path: the model folder or hub name.
        peft_config: the run's LoRA config (4-bit weights cannot train without adapters).
        option: the option's name in messages (``model.init_args.load_in_4bit``).

    Raises:
        ConfigError: no ``peft_config``, the built-in tiny model, or no ``bitsandbytes`` (or one too old to run
            4-bit layers on this machine).
    """
    from lit_rlhf.models.loading import is_builtin

    if peft_config is None:
        raise ConfigError(
            f"{option}: 4-bit base weights are frozen and cannot train; set model.init_args.peft_config (QLoRA trains "
            "LoRA adapters on them)"
        )
    if is_builtin(name_or_path):
        raise ConfigError(f"{option}: the built-in {name_or_path} model has no 4-bit form; point at a model folder")
    install = f"pip install 'bitsandbytes>={FOUR_BIT_MIN_VERSION}' (or pip install 'lit_rlhf[qlora]')"
    try:
        import bitsandbytes
    except ImportError as err:
        raise ConfigError(f"{option} needs the bitsandbytes package: {install}, or set load_in_4bit: false") from err
    cuda = torch.cuda.is_available()
    version = tuple(int(part) for part in bitsandbytes.__version__.split(".")[:2] if part.isdigit())
    if not cuda and version < tuple(int(part) for part in FOUR_BIT_MIN_VERSION.split(".")):
        raise ConfigError(
            f"{option}: bitsandbytes {bitsandbytes.__version__} runs 4-bit layers on CUDA only and this machine has "
            f"no CUDA device; {install}, or set load_in_4bit: false"
        )
    from transformers import BitsAndBytesConfig

    if cuda:
        compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        device: int | str = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
    else:
        compute, device = torch.float32, "cpu"
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute
    )
    return {"quantization_config": quantization, "dtype": compute, "device_map": {"": device}}


def prepare_four_bit(model: torch.nn.Module, gradient_checkpointing: bool) -> torch.nn.Module:
    """``peft``'s preparation of a 4-bit model for training (norms in float32, inputs that carry gradients)."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def dequantized_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The state dict of a model with 4-bit linear layers, each of their weights dequantised to the compute dtype
    (what merging an adapter into it needs); ``None`` when the model has no 4-bit layers."""
    bnb = sys.modules.get("bitsandbytes")  # imported by transformers when it loaded 4-bit weights
    if bnb is None:
        return None
    quantized = {name: m for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    if not quantized:
        return None
    state: dict[str, torch.Tensor] = {}
    for name, module in quantized.items():
        weight = module.weight
        state[f"{name}.weight"] = bnb.functional.dequantize_4bit(weight.data, weight.quant_state).to(
            module.compute_dtype or torch.float32
        )
        if module.bias is not None:
            state[f"{name}.bias"] = module.bias.data
    for key, value in model.state_dict().items():
        owner = key.rsplit(".", 1)[0] if "." in key else ""
        if owner in quantized or any(key.startswith(f"{name}.weight.") for name in quantized):
            continue  # the packed 4-bit weight and its quantisation state
        state.setdefault(key, value)
    return state
