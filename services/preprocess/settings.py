"""Preprocessing worker settings (env prefix ``RADREPORT_PREPROCESS_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class PreprocessSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADREPORT_PREPROCESS_", extra="ignore")

    max_pixels: int = Field(default=4096 * 4096, gt=0,
                            description="Images declaring more pixels are refused undecoded")
    clahe: bool = Field(default=False, description="Contrast-limited histogram equalisation")
    model_dir: Path | None = Field(default=None, description=(
        "Model folder (its input size and input-drift reference)"))


@lru_cache
def get_preprocess_settings() -> PreprocessSettings:
    return PreprocessSettings()
