"""Sending the gateway tests' stack a study (a plain module: conftest names collide)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright
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


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A 1400 x 1000 page of Debian's chromium, driven by Playwright (no browser download)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is not installed: run `make setup` (Debian package chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium,
                                             args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        finally:
            browser.close()
