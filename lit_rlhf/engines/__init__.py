"""Sampling engines: Hugging Face ``generate`` (the default) or a vLLM engine colocated in each training process.

:class:`~lit_rlhf.engines.settings.VLLMSettings` and the checks import nothing heavy; the engine itself
(:class:`~lit_rlhf.engines.vllm_engine.VLLMEngine`) imports vLLM when it is built.
"""

from lit_rlhf.engines.settings import SAMPLING_ENGINES, VLLM_INSTALL, VLLMSettings, require_vllm, vllm_available

__all__ = ["SAMPLING_ENGINES", "VLLM_INSTALL", "VLLMSettings", "require_vllm", "vllm_available"]
