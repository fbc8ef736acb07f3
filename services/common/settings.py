"""Settings shared by every service: where data lives and how services reach each other.

One pydantic-settings class per service, each with its own env prefix; this one is
``RADREPORT_``. Defaults are the embedded local stack (``radreport up``): SQLite and a blob
folder under ``var/``, Redis and Triton on loopback.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADREPORT_", extra="ignore")

    environment: str = Field(default="development",
                             description="development | production (stricter checks)")
    data_dir: Path = PROJECT_ROOT / "var" / "data"
    database_url: str = Field(default="", description="SQLAlchemy URL; empty: SQLite in data_dir")
    blob_root: Path | None = Field(default=None,
                                   description="Blob store root; empty: data_dir/blobs")
    redis_url: str = "redis://127.0.0.1:6380/0"  # the local stack's own Redis
    triton_url: str = Field(default="127.0.0.1:8001", description="Triton gRPC host:port")
    triton_model: str = Field(default="radreport_report_stream",
                              description="The decoupled model: sentences stream as decoded")
    public_base_url: str = Field(default="http://127.0.0.1:8080",
                                 description="How clients reach the gateway (links in FHIR)")
    max_attempts: int = Field(default=3, ge=1, description="Attempts per stage before dead-letter")
    retry_backoff_s: float = Field(default=1.0, gt=0)
    dependency_wait_s: float = Field(
        default=3600.0, gt=0, description="How long a stage waits for a dependency that is "
                                          "away (Triton) before the report is dead-lettered")
    visibility_timeout_s: int = Field(
        default=600, ge=5, description="Unacknowledged tasks are redelivered after this long")

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'radreport.db'}"

    @property
    def blobs(self) -> Path:
        return self.blob_root or self.data_dir / "blobs"


@lru_cache
def get_common_settings() -> CommonSettings:
    return CommonSettings()
