"""The review page shows the safety net (model v2) in a real browser, under the gateway's CSP.

No stack is started: Playwright serves the page's static files with the gateway's own
Content-Security-Policy and answers the API from a fixed report, so the test is about what
the page renders: the calibrated confidence, the OOD score with its badge and warning, and
the uncertain findings.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from gateway_helpers import chromium_page
from playwright.sync_api import Page, Route, expect

from services.common.schemas import ReportPublic, ReportStatus, StructuredFinding
from services.gateway.main import REVIEW_CSP, STATIC

pytestmark = [pytest.mark.integration]
ORIGIN = "http://review.test"
PNG_1X1 = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108000000003a7e9b55"
                        "0000000a49444154789c636000000002000148afa4710000000049454e44ae426082")
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def _report(**safety: Any) -> dict[str, Any]:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    findings = [StructuredFinding(finding="Pneumothorax", present=True, confidence=0.42,
                                  calibrated_probability=0.51, is_critical=True,
                                  mentioned_in_text=True, sentence_indices=[0])]
    return ReportPublic(
        report_id="RPT-1", study_id="STUDY-1", status=ReportStatus.completed,
        findings="Small left pneumothorax.", impression="Small left pneumothorax.",
        findings_structured=findings, grounding_map_url="/g", fhir_url="/f",
        confidence=0.93, requires_radiologist_review=True, model_version="radreport:2.0.0",
        created_at=now, updated_at=now, **safety).model_dump(mode="json")


def _serve(report: dict[str, Any]) -> Any:
    def handle(route: Route) -> None:
        path = route.request.url.removeprefix(ORIGIN).split("#")[0].split("?")[0]
        if path.startswith("/review/"):
            name = path.removeprefix("/review/") or "index.html"
            file = Path(STATIC) / name
            route.fulfill(status=200, body=file.read_bytes(),
                          headers={"Content-Type": TYPES[file.suffix],
                                   "Content-Security-Policy": REVIEW_CSP})
        elif path == "/api/v1/auth/me":
            route.fulfill(json={"subject": "dr-quinn", "role": "radiologist"})
        elif path == "/api/v1/reports/RPT-1":
            route.fulfill(json=report)
        elif path.endswith("image.png"):
            route.fulfill(status=200, body=PNG_1X1, headers={"Content-Type": "image/png"})
        else:
            route.fulfill(status=404, json={"detail": "not found"})
    return handle


@pytest.fixture
def browser_page() -> Iterator[tuple[Page, list[str]]]:
    with chromium_page() as page:
        page.add_init_script("sessionStorage.setItem('radreport-token', 'token')")
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda err: problems.append(str(err)))
        yield page, problems


def test_an_out_of_distribution_report_is_flagged(browser_page: tuple[Page, list[str]],
                                                  ) -> None:
    page, problems = browser_page
    page.route(f"{ORIGIN}/**", _serve(_report(
        calibrated_confidence=0.0, ood_score=31.46, ood_threshold=20.0,
        out_of_distribution=True, uncertain_findings=["Pneumothorax"],
        review_reasons=["outside the model's training distribution",
                        "uncertain critical finding: Pneumothorax"])))
    page.goto(f"{ORIGIN}/review/#/reports/RPT-1")
    expect(page.locator("#ood-badge")).to_be_visible()
    expect(page.locator("#ood-badge")).to_have_text("Outside the model's training distribution")
    expect(page.locator("#ood-warning")).to_be_visible()
    meta = page.locator("#report-meta")
    expect(meta).to_contain_text("Calibrated confidence0%")
    expect(meta).to_contain_text("OOD score31.5 (limit 20.0) · outside the training distribution")
    expect(meta).to_contain_text("Uncertain findingsPneumothorax")
    row = page.locator("#findings-table tbody tr").first
    expect(row).to_contain_text("42%")  # the raw head, as before
    expect(row).to_contain_text("51%")  # calibrated
    expect(row.locator(".badge.uncertain")).to_have_text("Uncertain")
    expect(page.locator("#review-reasons")).to_contain_text(
        "outside the model's training distribution")
    expect(page.locator("img#study-image")).to_have_attribute("data-showing", "image")
    assert problems == [], problems


def test_a_report_without_the_safety_net_shows_no_badge(browser_page: tuple[Page, list[str]],
                                                        ) -> None:
    page, problems = browser_page
    page.route(f"{ORIGIN}/**", _serve(_report()))
    page.goto(f"{ORIGIN}/review/#/reports/RPT-1")
    expect(page.locator("#report-title")).to_have_text("STUDY-1")
    expect(page.locator("#findings-table tbody tr").first).to_contain_text("42%")
    expect(page.locator("#ood-badge")).to_be_hidden()
    expect(page.locator("#ood-warning")).to_be_hidden()
    expect(page.locator("#report-meta")).not_to_contain_text("OOD score")
    expect(page.locator("img#study-image")).to_have_attribute("data-showing", "image")
    assert problems == [], problems
