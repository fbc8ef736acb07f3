"""Every endpoint against every kind of caller, on the running stack: no token, an expired
token, a forged token, each role, and a machine that did not request the report. Every
denial is 401, 403 or 404 and its body carries no PHI; every allowed call gets through."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from gateway_helpers import post_study

from radreport.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STUDY = "AUTHZ-STUDY-1"
PHI_MARKERS = ("PHANTOM", STUDY, "2.25.")  # patient name/id prefix, study id, UIDs


@pytest.fixture(scope="module")
def report_id(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    return post_study(stack, tmp_path_factory.mktemp("study"), STUDY, 8, "owner-ris")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _forged() -> str:
    """Right claims, signed by a key the gateway has never seen."""
    now = int(time.time())
    return jwt.encode({"sub": "mallory", "role": "admin", "iss": "radreport-local",
                       "aud": "radreport", "iat": now, "exp": now + 600},
                      ec.generate_private_key(ec.SECP256R1()), algorithm="ES256")


def _callers(stack: LocalStack) -> dict[str, dict[str, str]]:
    config = stack.config
    return {
        "none": {},
        "expired": _bearer(config.token("radiologist", "dr-late", ttl_s=-60)),
        "forged": _bearer(_forged()),
        "garbage": _bearer("not.a.token"),
        "radiologist": _bearer(config.token("radiologist", "dr-house")),
        "admin": _bearer(config.token("admin", "it-admin")),
        "owner": _bearer(config.token("service", "owner-ris")),
        "other-service": _bearer(config.token("service", "other-ris")),
    }


TEXT = {"findings": "The lungs are clear.", "impression": "No acute process."}
# endpoint -> callers allowed (the rest must be denied)
MATRIX = [
    ("GET", "/api/v1/reports/{id}", {"radiologist", "admin", "owner"}),
    ("GET", "/api/v1/reports/{id}/fhir", {"radiologist", "admin", "owner"}),
    ("GET", "/api/v1/reports/{id}/grounding", {"radiologist", "admin", "owner"}),
    ("GET", "/api/v1/reports/{id}/sentences/0/overlay.png?size=preview",
     {"radiologist", "admin", "owner"}),
    ("GET", "/api/v1/reports/{id}/image.png", {"radiologist", "admin", "owner"}),
    ("GET", "/api/v1/worklist", {"radiologist", "admin"}),
    ("PUT", "/api/v1/reports/{id}/text", {"radiologist"}),
    ("POST", "/api/v1/reports/{id}/sign", {"radiologist"}),
    ("GET", "/api/v1/audit", {"admin"}),
    ("GET", "/api/v1/auth/me", {"radiologist", "admin", "owner", "other-service"}),
    ("POST", "/api/v1/reports/generate", {"radiologist", "owner", "other-service"}),
]
CALLERS = ["none", "expired", "forged", "garbage", "radiologist", "admin", "owner",
           "other-service"]


@pytest.mark.parametrize(("method", "path", "allowed"), MATRIX,
                         ids=[f"{m} {p}" for m, p, _ in MATRIX])
@pytest.mark.parametrize("caller", CALLERS)
def test_authorization_matrix(stack: LocalStack, report_id: str, method: str, path: str,
                              allowed: set[str], caller: str) -> None:
    url = stack.config.gateway_url + path.format(id=report_id)
    kwargs: dict[str, object] = {"headers": _callers(stack)[caller], "timeout": 60}
    if path.endswith(("/text", "/sign")):
        kwargs["json"] = TEXT
    if path.endswith("/generate"):  # authorised callers then fail validation: no image
        kwargs["json"] = {"study_id": "AUTHZ-NOIMAGE"}
    response = httpx.request(method, url, **kwargs)  # type: ignore[arg-type]
    if caller in allowed:
        expected = {422} if path.endswith("/generate") else {200}
        assert response.status_code in expected, (caller, response.text)
        return
    assert response.status_code in (401, 403, 404), (caller, response.status_code)
    if caller in ("none", "expired", "forged", "garbage"):
        assert response.status_code == 401
        assert response.headers.get("www-authenticate") == "Bearer"
    if caller == "other-service" and "owner" in allowed:
        assert response.status_code == 404  # another client's report does not exist for it
    if caller in ("radiologist", "admin", "owner", "other-service") and "owner" not in allowed \
            and caller not in allowed:
        assert response.status_code == 403  # the role may not do this at all
    for marker in PHI_MARKERS:
        assert marker not in response.text, (caller, path, response.text)


def test_study_listing_shows_machines_only_their_own(stack: LocalStack, report_id: str) -> None:
    url = f"{stack.config.gateway_url}/api/v1/studies/{STUDY}/reports"
    callers = _callers(stack)
    assert [r["report_id"] for r in httpx.get(url, headers=callers["owner"]).json()] == [
        report_id]
    assert httpx.get(url, headers=callers["other-service"]).json() == []
    assert httpx.get(url, headers=callers["radiologist"]).json()[0]["report_id"] == report_id
    assert httpx.get(url).status_code == 401


def test_api_keys_authenticate_machines(stack: LocalStack, report_id: str) -> None:
    from services.common.auth import AuthSettings, Role, create_api_key

    key = create_api_key("owner-ris", Role.service, AuthSettings(key_dir=stack.config.key_dir))
    me = httpx.get(f"{stack.config.gateway_url}/api/v1/auth/me", headers={"X-API-Key": key})
    assert me.json() == {"subject": "owner-ris", "role": "service"}
    report = httpx.get(f"{stack.config.gateway_url}/api/v1/reports/{report_id}",
                       headers={"X-API-Key": key})
    assert report.status_code == 200
    wrong = httpx.get(f"{stack.config.gateway_url}/api/v1/auth/me",
                      headers={"X-API-Key": key + "x"})
    assert wrong.status_code == 401


def test_denials_and_reads_are_audited(stack: LocalStack, report_id: str) -> None:
    callers = _callers(stack)
    for caller in ("other-service", "radiologist"):
        httpx.get(f"{stack.config.gateway_url}/api/v1/reports/{report_id}",
                  headers=callers[caller])
    trail = httpx.get(f"{stack.config.gateway_url}/api/v1/audit",
                      params={"resource_id": report_id, "limit": 1000},
                      headers=callers["admin"]).json()
    outcomes = {(e["actor"], e["action"], e["outcome"]) for e in trail}
    assert ("owner-ris", "create", "success") in outcomes
    assert ("other-ris", "read", "denied") in outcomes
    assert ("dr-house", "read", "success") in outcomes


def test_an_empty_impression_is_not_signed_and_is_saved_as_text(stack: LocalStack,
                                                                 report_id: str) -> None:
    """Sign-off needs an impression (422, nothing changes); an edit may leave it empty, and
    the FHIR report then has no conclusion rather than an invalid empty one."""
    headers = _callers(stack)["radiologist"]
    url = f"{stack.config.gateway_url}/api/v1/reports/{report_id}"
    before = httpx.get(url, headers=headers, timeout=60).json()
    empty = {"findings": "The lungs are clear.", "impression": "  "}
    refused = httpx.post(f"{url}/sign", json=empty, headers=headers, timeout=60)
    assert refused.status_code == 422 and "impression" in refused.text
    after = httpx.get(url, headers=headers, timeout=60).json()
    keys = ("review_status", "signed_by", "signed_at", "impression")
    assert {k: after.get(k) for k in keys} == {k: before.get(k) for k in keys}
    saved = httpx.put(f"{url}/text", json={**empty, "impression": ""}, headers=headers,
                      timeout=60)
    assert saved.status_code == 200, saved.text
    bundle = httpx.get(f"{url}/fhir", headers=headers, timeout=60).json()
    report = next(e["resource"] for e in bundle["entry"]
                  if e["resource"]["resourceType"] == "DiagnosticReport")
    assert "conclusion" not in report
