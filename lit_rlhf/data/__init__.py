"""LightningDataModules (one per dataset), row validation, tokenization and collation."""

from lit_rlhf.data.arithmetic import ArithmeticDataModule
from lit_rlhf.data.base import RLHFDataModule
from lit_rlhf.data.hh_rlhf import HHRLHFDataModule
from lit_rlhf.data.mapped import MappedRowsDataModule, SkipRow, require_field
from lit_rlhf.data.preference import PreferenceDataModule, PreferenceRowsDataModule
from lit_rlhf.data.prompt_optimization import PromptOptimizationDataModule
from lit_rlhf.data.prompts import PromptDataModule
from lit_rlhf.data.rows import DataError, RowSet
from lit_rlhf.data.sft import SFTDataModule, SFTRowsDataModule
from lit_rlhf.data.smoltldr import SmolTLDRDataModule
from lit_rlhf.data.tldr import TLDRDataModule
from lit_rlhf.data.tokenized import TokenizedRowsDataModule

__all__ = [
    "ArithmeticDataModule",
    "DataError",
    "HHRLHFDataModule",
    "MappedRowsDataModule",
    "PreferenceDataModule",
    "PreferenceRowsDataModule",
    "PromptDataModule",
    "PromptOptimizationDataModule",
    "RLHFDataModule",
    "RowSet",
    "SFTDataModule",
    "SFTRowsDataModule",
    "SkipRow",
    "SmolTLDRDataModule",
    "TLDRDataModule",
    "TokenizedRowsDataModule",
    "require_field",
]
