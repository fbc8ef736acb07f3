"""The gateway keeps its published contract, on the running stack. Schemathesis against its
own OpenAPI document, as a radiologist: every answer is documented (status, content type,
body schema) and none is a server error; bodies over the cap are refused unread.

A small, fixed-seed budget keeps ``make test`` quick; the full run (10,000+ cases) belongs
to the chaos command (issue 16, R10)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
import schemathesis
from gateway_helpers import post_study

from radreport.bench.api_fuzz import fuzz_api
from radreport.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_every_answer_is_documented_and_none_is_a_server_error(stack: LocalStack) -> None:
    token = stack.config.token("radiologist", "dr-fuzz")
    result = fuzz_api(stack.config.gateway_url, token, cases=8 * 15, fixed_seed=16)
    assert result.operations >= 15  # every route of the API is in the document
    assert result.cases >= 60  # routes without parameters have only a case or two
    assert (result.server_errors, dict(result.failures)) == (0, {})


def test_real_answers_about_a_real_report_match_the_document(
        stack: LocalStack, tmp_path: Path) -> None:
    """Fuzzed ids never find a report, so the answers that carry one (timestamps with their
    offset, the review fields) are checked on a report the stack really made."""
    api = schemathesis.openapi.from_url(f"{stack.config.gateway_url}/openapi.json")
    report_id = post_study(stack, tmp_path, "OPENAPI-STUDY-1", 3, "owner-ris")
    radiologist = {"Authorization": f"Bearer {stack.config.token('radiologist', 'dr-x')}"}
    admin = {"Authorization": f"Bearer {stack.config.token('admin', 'it-admin')}"}
    text = {"findings": "The lungs are clear.", "impression": "No acute process."}
    calls = [
        ("GET", "/api/v1/reports/{report_id}", radiologist, None),
        ("GET", "/api/v1/studies/{study_id}/reports", radiologist, None),
        ("GET", "/api/v1/worklist", radiologist, None),
        ("PUT", "/api/v1/reports/{report_id}/text", radiologist, text),
        ("POST", "/api/v1/reports/{report_id}/sign", radiologist, {**text, "impression": ""}),
        ("POST", "/api/v1/reports/{report_id}/sign", radiologist, text),
        ("GET", "/api/v1/audit", admin, None),
    ]
    with httpx.Client(base_url=stack.config.gateway_url, timeout=60) as client:
        for method, template, headers, body in calls:
            url = template.format(report_id=report_id, study_id="OPENAPI-STUDY-1")
            response = client.request(method, url, headers=headers, json=body)
            assert response.status_code < 500, (method, template, response.text)
            api[template][method].validate_response(response)
            if template.endswith("/reports/{report_id}"):
                created = datetime.fromisoformat(response.json()["created_at"])
                assert created.utcoffset() == timedelta(0)


def test_an_oversized_body_is_refused_before_it_is_read(stack: LocalStack) -> None:
    token = stack.config.token("service", "owner-ris")
    response = httpx.post(f"{stack.config.gateway_url}/api/v1/reports/generate", timeout=60,
                          headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": "application/json"},
                          content=b'{"study_id": "' + b"A" * (2 * 1024 * 1024) + b'"}')
    assert (response.status_code, response.json()["reason"]) == (413, "body_too_large")
    metrics = httpx.get(f"{stack.config.gateway_url}/metrics", timeout=30).text
    counted = [line for line in metrics.splitlines()
               if line.startswith("radreport_http_requests_total") and 'status="413"' in line]
    assert counted and 'route="/api/v1/reports/generate"' in counted[0], counted


def test_a_form_with_too_many_fields_is_a_documented_422(stack: LocalStack) -> None:
    """Found by the 10,000-case run: Starlette answered an undocumented 400."""
    token = stack.config.token("service", "owner-ris")
    fields = {f"extra{i}": "x" for i in range(12)}
    response = httpx.post(f"{stack.config.gateway_url}/api/v1/reports/generate", timeout=60,
                          headers={"Authorization": f"Bearer {token}"},
                          data={"study_id": "FORM-1", **fields},
                          files={"file": ("s.dcm", b"DICM")})
    assert (response.status_code, response.json()["reason"]) == (422, "bad_form")
