"""Inference worker settings (env prefix ``RADREPORT_INFERENCE_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADREPORT_INFERENCE_", extra="ignore")

    timeout_s: float = Field(default=60.0, gt=0, description="Deadline of one Triton attempt")
    retries: int = Field(default=3, ge=0, description="Client retries on transient errors")
    box_threshold: float = Field(default=0.5, gt=0, lt=1,
                                 description="Grounding boxes: regions above this x peak")


@lru_cache
def get_inference_settings() -> InferenceSettings:
    return InferenceSettings()
