"""Grounded report model: ViT encoder, cross-attending decoder, tokenizer, decoding, data."""

from radreport.model.config import ModelConfig
from radreport.model.model import ModelOutput, RadReportModel

__all__ = ["ModelConfig", "ModelOutput", "RadReportModel"]
