"""DICOM over TLS with client certificates (R16): the Storage SCP, given a CA
(RADREPORT_DICOM_TLS_CA_CERTIFICATES), serves a peer whose certificate that CA signed and
refuses one signed by anybody else, or none; a real pynetdicom peer over real TLS."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from radreport.bench.pki import Pki, echo_over_tls, hospital_pki, tls_scp
from services.dicom.scp import StorageSCP

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return hospital_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def scp(pki: Pki, tmp_path: Path) -> Iterator[StorageSCP]:
    scp = tls_scp(pki, tmp_path)
    try:
        yield scp
    finally:
        scp.stop()


def _echo(scp: StorageSCP, pki: Pki, client: str | None) -> bool:
    return echo_over_tls(scp.settings.port, pki, client)


def test_a_peer_with_a_certificate_the_hospital_ca_signed_is_served(
        scp: StorageSCP, pki: Pki) -> None:
    assert _echo(scp, pki, "modality")


def test_a_peer_with_an_untrusted_certificate_or_none_is_refused(
        scp: StorageSCP, pki: Pki) -> None:
    assert not _echo(scp, pki, "stranger")
    assert not _echo(scp, pki, None)
    assert _echo(scp, pki, "modality")  # the refusals left the service serving
