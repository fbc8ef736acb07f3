"""Edit, sign and amend are all or nothing, on the running stack: a refused or failed review
leaves the report, its FHIR bundle and its audit trail exactly as they were, apart from one
audit record of the failure; a successful one is audited once."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from gateway_helpers import post_study

from radreport.stack import LocalStack
from services.common.store import Store

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TEXT = {"findings": "The lungs are clear.", "impression": "No acute process."}


@pytest.fixture(scope="module")
def report_id(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    return post_study(stack, tmp_path_factory.mktemp("study"), "TXN-STUDY-1", 9, "txn-ris")


def _snapshot(stack: LocalStack, report_id: str) -> dict[str, Any]:
    """What a review may change: the stored report, its bundle's bytes, its audit trail."""
    store = Store(f"sqlite:///{stack.config.data_dir / 'radreport.db'}")
    report = store.get(report_id)
    assert report is not None
    bundle = stack.config.data_dir / "blobs" / "reports" / report_id / "fhir.json"
    audit = [(e.actor, e.action, e.outcome, e.detail)
             for e in store.audit_events(report_id, limit=1000)]
    return {"review": (report.review_status, report.reviewed_text, report.signed_by,
                       report.signed_at, report.edit_distance, report.updated_at),
            "history": [c.status for c in store.history(report_id)],
            "bundle": bundle.read_bytes(), "audit": audit}


def _call(stack: LocalStack, method: str, path: str, body: dict[str, str]) -> httpx.Response:
    token = stack.config.token("radiologist", "dr-txn")
    return httpx.request(method, f"{stack.config.gateway_url}/api/v1/reports/{path}",
                         json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _one_new_failure(before: dict[str, Any], after: dict[str, Any], action: str) -> None:
    assert {k: after[k] for k in ("review", "history", "bundle")} == {
        k: before[k] for k in ("review", "history", "bundle")}
    added = after["audit"][: len(after["audit"]) - len(before["audit"])]  # newest first
    assert [(a[0], a[1], a[2]) for a in added] == [("dr-txn", action, "failure")]


def test_a_refused_sign_changes_nothing_but_its_audit_record(stack: LocalStack,
                                                            report_id: str) -> None:
    before = _snapshot(stack, report_id)
    refused = _call(stack, "POST", f"{report_id}/sign", {**TEXT, "impression": " "})
    assert refused.status_code == 422
    _one_new_failure(before, _snapshot(stack, report_id), "sign")


def test_a_fault_inside_the_review_leaves_store_and_bundle_as_they_were(
        stack: LocalStack, report_id: str) -> None:
    """The draft the bundle is rebuilt from is made unreadable mid-life: the sign fails
    inside the transaction, and neither the store nor the bundle keeps any of it."""
    draft = stack.config.data_dir / "blobs" / "reports" / report_id / "draft.json"
    hidden = draft.with_name("draft.json.hidden")
    before = _snapshot(stack, report_id)
    draft.rename(hidden)
    try:
        failed = _call(stack, "POST", f"{report_id}/sign", TEXT)
    finally:
        hidden.rename(draft)
    assert failed.status_code == 500 and "nothing changed" in failed.json()["detail"]
    _one_new_failure(before, _snapshot(stack, report_id), "sign")


def test_sign_then_amend_each_audited_once_with_the_bundle_in_step(
        stack: LocalStack, report_id: str) -> None:
    before = _snapshot(stack, report_id)
    signed = _call(stack, "POST", f"{report_id}/sign", TEXT)
    assert signed.status_code == 200 and signed.json()["review_status"] == "signed"
    amended = _call(stack, "PUT", f"{report_id}/text", {**TEXT, "impression": "Amended."})
    assert amended.status_code == 200 and amended.json()["review_status"] == "amended"
    after = _snapshot(stack, report_id)
    added = after["audit"][: len(after["audit"]) - len(before["audit"])]
    assert [(a[1], a[2]) for a in added] == [("edit", "success"), ("sign", "success")]
    assert b'"status": "amended"' in after["bundle"] or b'"status":"amended"' in after["bundle"]
