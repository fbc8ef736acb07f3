"""Gateway settings (env prefix ``RADREPORT_GATEWAY_``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.settings import PROJECT_ROOT


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RADREPORT_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    grpc_host: str = Field(default="127.0.0.1", description="Where the gRPC API listens")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="0: no gRPC API")
    grpc_tls_cert: Path | None = Field(default=None, description="PEM certificate chain: "
                                       "with grpc_tls_key, the gRPC API speaks TLS only")
    grpc_tls_key: Path | None = Field(default=None, description="PEM private key")
    grpc_max_message_bytes: int = Field(
        default=65 * 1024 * 1024, gt=0,
        description="Largest gRPC request or response; an image up to max_upload_bytes fits")
    grpc_max_concurrent_rpcs: int = Field(default=64, gt=0,
                                          description="More are refused RESOURCE_EXHAUSTED")
    stream_timeout_s: float = Field(default=300.0, gt=0,
                                    description="Longest a GenerateStream follows a report")
    image_root: Path = Field(default=PROJECT_ROOT / "var" / "images",
                             description="image_path must resolve below this folder")
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0,
                                  description="A request body not all received by then: 408")
    max_pixels: int = Field(default=4096 * 4096, gt=0,
                            description="Images declaring more pixels are refused unread")
    sync_wait_s: float = Field(default=30.0, ge=0,
                               description="How long a synchronous generate waits, then 202")
    fetch_timeout_s: float = Field(default=10.0, gt=0,
                                   description="Total deadline of an image_url download")
    image_url_hosts: list[str] = Field(
        default_factory=list, description="Host names image_url may fetch from (JSON list); "
                                          "empty: image_url is refused")
    image_url_schemes: list[str] = Field(default_factory=lambda: ["https"],
                                         description="Schemes image_url may use")
    image_url_allowed_networks: list[str] = Field(
        default_factory=list, description="Non-public networks (CIDR) an allowed host may "
                                          "nonetheless resolve to, e.g. an in-hospital image "
                                          "server; loopback, private and link-local addresses "
                                          "are refused otherwise")
    redrive_period_s: float = Field(default=10.0, ge=0, description="How often the "
                                    "re-driver looks for reports whose message was lost; 0: off")
    redrive_idle_s: float = Field(default=30.0, gt=0, description="A report unmoved this long "
                                  "whose next message is gone is queued again")
    redrive_in_flight_s: float = Field(default=60.0, gt=0, description="A message reserved by a "
                                       "worker longer than this is taken as lost")
    audit_syslog: str | None = Field(default=None,
                                     description="host:port of a syslog collector for audit")
    model_dir: Path | None = Field(default=None,
                                   description="Model folder Triton serves (its model.json)")


@lru_cache
def get_gateway_settings() -> GatewaySettings:
    return GatewaySettings()
