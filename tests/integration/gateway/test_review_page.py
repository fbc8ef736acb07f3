"""The review page in a real browser (Playwright driving Debian's chromium) against the
running stack: sign in, open a report from the worklist, select a sentence and see its
overlay, edit, sign, and find the FHIR report final. Screenshots go to var/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from gateway_helpers import chromium_page, post_study
from playwright.sync_api import Page, expect

from radreport.serving.tritonserver import PROJECT_ROOT
from radreport.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SCREENSHOTS = PROJECT_ROOT / "var" / "screenshots"


@pytest.fixture(scope="module")
def report_id(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    return post_study(stack, tmp_path_factory.mktemp("study"), "REVIEW-1", 12, "local-service")


@pytest.fixture
def page() -> Iterator[Page]:
    with chromium_page() as page:
        yield page


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_a_radiologist_reviews_edits_and_signs(stack: LocalStack, report_id: str,
                                               page: Page) -> None:
    base = stack.config.gateway_url
    page.goto(f"{base}/review/")
    page.fill("#token", stack.config.token("radiologist", "dr-quinn"))
    page.locator("#login-form").locator("button[type=submit], input[type=submit]").click()
    expect(page.locator("#user")).to_contain_text("dr-quinn")
    row = page.locator(f"tr.worklist-row[data-report-id='{report_id}']")
    expect(row).to_be_visible()
    _shot(page, "1-worklist")

    row.click()
    sentences = page.locator("li.sentence")
    expect(sentences.first).to_be_visible()
    image = page.locator("img#study-image")
    expect(image).to_have_attribute("data-showing", "image")
    sentences.nth(1).click()
    expect(image).to_have_attribute("data-showing", "sentence-1")
    expect(sentences.nth(1)).to_have_attribute("aria-selected", "true")
    assert page.evaluate("document.querySelector('img#study-image').naturalWidth") > 0
    expect(page.locator("#findings-table")).to_be_visible()
    _shot(page, "2-sentence-overlay")

    findings = page.locator("#findings-text")
    findings.fill(findings.input_value() + " Addendum by the reading radiologist.")
    page.click("#sign-button")
    expect(page.locator("#review-status")).to_contain_text("signed", ignore_case=True)
    page.click("#show-fhir")
    expect(page.locator("#fhir-json")).to_contain_text('"final"')
    _shot(page, "3-signed")

    headers = {"Authorization": f"Bearer {stack.config.token('radiologist')}"}
    report = httpx.get(f"{base}/api/v1/reports/{report_id}", headers=headers).json()
    assert report["review_status"] == "signed" and report["signed_by"] == "dr-quinn"
    assert report["edit_distance"] > 0
    assert report["findings"].endswith("Addendum by the reading radiologist.")
    bundle = httpx.get(f"{base}/api/v1/reports/{report_id}/fhir", headers=headers).json()
    (diagnostic,) = [e["resource"] for e in bundle["entry"]
                     if e["resource"]["resourceType"] == "DiagnosticReport"]
    assert diagnostic["status"] == "final"
    assert all((SCREENSHOTS / f"{n}.png").stat().st_size > 0
               for n in ("1-worklist", "2-sentence-overlay", "3-signed"))


def test_a_bad_token_is_sent_back_to_sign_in(stack: LocalStack, page: Page) -> None:
    page.goto(f"{stack.config.gateway_url}/review/")
    page.fill("#token", "not-a-token")
    page.locator("#login-form").locator("button[type=submit], input[type=submit]").click()
    expect(page.locator("[role=alert]").first).to_contain_text("not valid")
    expect(page.locator("#login-form")).to_be_visible()
