"""The gRPC API over TLS (RADREPORT_GATEWAY_GRPC_TLS_CERT/_KEY): plaintext is refused."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from radreport.stack import LocalStack, StackConfig
from radreport.v1 import report_service_pb2 as service_pb
from radreport.v1 import report_service_pb2_grpc as service_grpc

pytestmark = pytest.mark.integration


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "radreport test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .sign(key, hashes.SHA256()))
    cert, key_file = folder / "grpc.crt", folder / "grpc.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key_file


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("grpc-tls")
    cert, key = self_signed(root)
    config = StackConfig.on_free_ports(root)
    config.extra_env.update({"RADREPORT_GATEWAY_GRPC_TLS_CERT": str(cert),
                             "RADREPORT_GATEWAY_GRPC_TLS_KEY": str(key)})
    with LocalStack(config) as running:
        yield running


def test_the_api_speaks_tls_and_refuses_plaintext(stack: LocalStack) -> None:
    cert = Path(stack.config.extra_env["RADREPORT_GATEWAY_GRPC_TLS_CERT"]).read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=cert)
    with grpc.secure_channel(stack.config.grpc_target, credentials) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert answer.status in (health_pb2.HealthCheckResponse.SERVING,
                                 health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.RpcError) as caught:  # TLS carries the call; auth still needed
            service_grpc.ReportServiceStub(channel).GetReport(
                service_pb.GetReportRequest(report_id="RPT-0"), timeout=30)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with grpc.insecure_channel(stack.config.grpc_target) as plain:
        with pytest.raises(grpc.RpcError) as caught:
            health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
