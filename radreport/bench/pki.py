"""A hospital's PKI in miniature for DICOM TLS checks (R16): a CA, a rogue CA, and
certificates for 127.0.0.1 signed by either. Used by the TLS tests and ``bench chaos``."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

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

Issuer = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
Pki = dict[str, tuple[Path, Path]]  # name -> (certificate, key) PEM files


def certificate(folder: Path, name: str, issuer: Issuer | None, ca: bool = False,
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
    signed = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(signed.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, (signed, key)


def hospital_pki(folder: Path) -> Pki:
    """ca, server (radreport), modality (signed by the CA), stranger (by a rogue CA)."""
    ca_cert, ca_key, ca = certificate(folder, "hospital-ca", None, ca=True)
    *_, rogue = certificate(folder, "rogue-ca", None, ca=True)
    server = certificate(folder, "radreport", ca)
    modality = certificate(folder, "modality", ca)
    stranger = certificate(folder, "stranger", rogue)
    return {"ca": (ca_cert, ca_key), "server": server[:2], "modality": modality[:2],
            "stranger": stranger[:2]}


def echo_over_tls(port: int, pki: Pki, client: str | None) -> bool:
    """C-ECHO over TLS as ``client`` (a certificate name, or None for no certificate)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca"][0]))
    if client is not None:
        context.load_cert_chain(*pki[client])
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="RADREPORT",
                         tls_args=(context, "127.0.0.1"))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) == 0x0000


def tls_scp(pki: Pki, folder: Path) -> StorageSCP:
    """A Storage SCP on a free port, with its own SQLite store, that serves TLS with the
    server certificate and trusts the PKI's CA for client certificates; started."""
    store = Store(f"sqlite:///{folder / 'reports.db'}")
    store.migrate()
    scp = StorageSCP(DicomSettings(port=free_port(), tls_certificate=pki["server"][0],
                                   tls_private_key=pki["server"][1],
                                   tls_ca_certificates=pki["ca"][0]), store, folder / "instances")
    scp.start()
    return scp
