"""DICOM over TLS with client certificates (R16): the Storage SCP, given a CA
(RADREPORT_DICOM_TLS_CA_CERTIFICATES), serves a peer whose certificate that CA signed and
refuses one signed by anybody else, or none; a real pynetdicom peer over real TLS."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from radreport.serving.tritonserver import free_port
from services.common.store import Store
from services.dicom.scp import StorageSCP
from services.dicom.settings import DicomSettings

pytestmark = pytest.mark.integration
Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def _certificate(folder: Path, name: str, issuer: Issuer | None, ca: bool = False,
                 ) -> tuple[Path, Path, Issuer]:
    """A PEM certificate and key for 127.0.0.1, signed by ``issuer`` (or by itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer[0].subject if issuer else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectAlternativeName(
                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False))
    certificate = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, (certificate, key)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key, ca = _certificate(folder, "hospital-ca", None, ca=True)
    *_, rogue = _certificate(folder, "rogue-ca", None, ca=True)
    server = _certificate(folder, "radreport", ca)
    modality = _certificate(folder, "modality", ca)
    stranger = _certificate(folder, "stranger", rogue)
    return {"ca": (ca_cert, ca_key), "server": server[:2], "modality": modality[:2],
            "stranger": stranger[:2]}


@pytest.fixture
def scp(pki: dict[str, tuple[Path, Path]], tmp_path: Path) -> Iterator[StorageSCP]:
    store = Store(f"sqlite:///{tmp_path / 'reports.db'}")
    store.migrate()
    settings = DicomSettings(port=free_port(), tls_certificate=pki["server"][0],
                             tls_private_key=pki["server"][1],
                             tls_ca_certificates=pki["ca"][0])
    scp = StorageSCP(settings, store, tmp_path / "instances")
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


def _echo(scp: StorageSCP, pki: dict[str, tuple[Path, Path]], client: str | None) -> bool:
    """C-ECHO over TLS as ``client`` (a certificate name, or None for no certificate)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"][0]))
    if client is not None:
        context.load_cert_chain(*pki[client])
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", scp.settings.port, ae_title="RADREPORT",
                         tls_args=(context, "127.0.0.1"))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) == 0x0000


def test_a_peer_with_a_certificate_the_hospital_ca_signed_is_served(
        scp: StorageSCP, pki: dict[str, tuple[Path, Path]]) -> None:
    assert _echo(scp, pki, "modality")


def test_a_peer_with_an_untrusted_certificate_or_none_is_refused(
        scp: StorageSCP, pki: dict[str, tuple[Path, Path]]) -> None:
    assert not _echo(scp, pki, "stranger")
    assert not _echo(scp, pki, None)
    assert _echo(scp, pki, "modality")  # the refusals left the service serving
