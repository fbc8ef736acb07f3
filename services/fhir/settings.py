"""FHIR formatter settings (env prefix ``RADREPORT_FHIR_``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FhirSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADREPORT_FHIR_", extra="ignore")

    present_threshold: float = Field(
        default=0.5, gt=0, lt=1,
        description="Label-head probability taken as present, for drafts without the "
                    "model's own (calibrated) decisions")
    low_confidence: float = Field(default=0.7, gt=0, lt=1,
                                  description="Head/text agreement below this flags review")


@lru_cache
def get_fhir_settings() -> FhirSettings:
    return FhirSettings()
