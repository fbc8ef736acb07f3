"""Sending the gateway tests' stack a study (a plain module: conftest names collide)."""

from __future__ import annotations

from pathlib import Path

import httpx
from pydicom.uid import ExplicitVRLittleEndian

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from radreport.stack import LocalStack


def post_study(stack: LocalStack, folder: Path, study_id: str, seed: int,
               requester: str = "local-service") -> str:
    """A phantom CR study sent by a machine client; its completed report's id."""
    path = write_study_dicom(generate_study(seed, 384), folder,
                             DicomOptions("CR", "MONOCHROME1", 12, str(ExplicitVRLittleEndian)))
    response = httpx.post(f"{stack.config.gateway_url}/api/v1/reports/generate", timeout=120,
                          headers={"Authorization":
                                   f"Bearer {stack.config.token('service', requester)}"},
                          data={"study_id": study_id}, files={"file": ("s.dcm", path.read_bytes())})
    assert response.status_code == 200, response.text
    return str(response.json()["report_id"])
