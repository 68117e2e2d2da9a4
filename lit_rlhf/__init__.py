"""lit_rlhf: PyTorch Lightning modules for RLHF of language models (SFT, reward modelling, PPO, GRPO)."""

import logging

__version__ = "0.1.0"

# Where bitsandbytes is installed (the qlora extra), peft imports it, and on CPUs with AVX512-BF16 its import tries to
# load an optional bf16 kernel from the Hugging Face Hub and warns when it cannot (always offline). lit_rlhf's 4-bit
# path does not use that kernel, so the warning would only bury the command's own output.
for _name in ("bitsandbytes.backends.cpu.ops", "kernels._internals.hf_hub"):
    logging.getLogger(_name).setLevel(logging.ERROR)
