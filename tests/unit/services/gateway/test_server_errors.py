"""A server error is counted in radreport_http_requests_total like any other answer, and its
body names nothing internal (the exception's text can quote anything)."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from services.gateway.main import create_app


def _count(path: str, code: str) -> float:
    value = REGISTRY.get_sample_value("radreport_http_requests_total",
                                      {"method": "GET", "route": path, "status": code})
    return value or 0.0


def test_an_unhandled_error_is_a_counted_500_that_leaks_nothing() -> None:
    app = create_app()

    @app.get("/boom/{item}")
    def boom(item: str) -> None:
        raise RuntimeError(f"patient CANARY^NAME in {item}")

    before = _count("/boom/{item}", "500")
    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: no store needed
    answer = client.get("/boom/x")
    assert answer.status_code == 500
    assert answer.json() == {"detail": "internal server error", "reason": "internal"}
    assert _count("/boom/{item}", "500") == before + 1
