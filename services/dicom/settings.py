"""DICOM gateway settings (env prefix ``RADREPORT_DICOM_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class DicomSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADREPORT_DICOM_", extra="ignore")

    ae_title: str = Field(default="RADREPORT", max_length=16)
    host: str = Field(default="127.0.0.1", description="Bind address; 0.0.0.0 for PACS")
    port: int = Field(default=11112, ge=1, le=65535)
    allowed_calling_aets: list[str] = Field(
        default_factory=list, description="Calling AE titles allowed; empty: any")
    allowed_hosts: list[str] = Field(default_factory=list,
                                     description="Peer IP addresses allowed; empty: any")
    max_associations: int = Field(default=10, ge=1)
    max_associations_per_peer: int = Field(
        default=4, ge=1, description="Associations one peer address may hold at once, so "
                                     "a peer hoarding idle ones cannot starve the others")
    acse_timeout_s: float = 30.0
    dimse_timeout_s: float = 30.0
    network_timeout_s: float = Field(default=60.0, gt=0,
                                     description="An association idle this long is aborted")
    storage_dir: Path | None = Field(default=None, description="Default: data_dir/dicom")
    max_instance_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0,
        description="Largest dataset accepted, measured inflated for Deflated syntaxes; "
                    "larger ones answer A700 before they are decoded")
    min_free_bytes: int = Field(default=256 * 1024 * 1024,
                                description="Below this free space, C-STORE answers A700")
    study_idle_s: float = Field(default=10.0, gt=0,
                                description="A study is complete this long after its last "
                                            "instance")
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    tls_ca_certificates: Path | None = Field(default=None,
                                             description="Require client certificates")
    destinations: list[str] = Field(
        default_factory=list, description="Where results go: AET@host:port, e.g. PACS@10.0.0.5:104")
    metrics_host: str = Field(default="127.0.0.1", description="0.0.0.0 to be scraped from "
                                                               "other hosts")
    metrics_port: int = Field(default=9102, ge=0, le=65535,
                              description="Prometheus /metrics of this service; 0: off")
    poll_s: float = Field(default=1.0, gt=0, description="Completion and outbox loop period")
    export_retry_s: float = Field(default=5.0, gt=0, description="First retry wait; doubles")
    export_max_wait_s: float = Field(default=300.0, gt=0)


@lru_cache
def get_dicom_settings() -> DicomSettings:
    return DicomSettings()
