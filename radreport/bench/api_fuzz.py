"""Schemathesis against a running gateway's own OpenAPI document (issue 16, R10).

Every operation gets an equal share of the cases, generated with a fixed seed, sent with a
radiologist's token; each answer is checked for being a server error and for conformance
(status code, content type, body schema). Failures are counted by kind, not raised.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@dataclass
class FuzzResult:
    cases: int = 0
    operations: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # kind -> count
    server_errors: int = 0


def fuzz_api(base_url: str, token: str, cases: int, fixed_seed: int = 0) -> FuzzResult:
    """About ``cases`` cases in all: shared out equally, and again among the operations
    whose inputs were not exhausted (a route without parameters has only a case or two),
    each round with the next seed."""
    api = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [r.ok() for r in api.get_all_operations() if isinstance(r, Ok)]
    result = FuzzResult(operations=len(operations))
    active, round_seed = operations, fixed_seed
    while result.cases < cases and active:
        share = max(1, (cases - result.cases) // len(active))
        still = []
        for operation in active:
            before = result.cases
            _fuzz_operation(operation, share, round_seed, token, result)
            if result.cases - before >= share:
                still.append(operation)
        active, round_seed = still, round_seed + 1
    return result


def _fuzz_operation(operation: Any, examples: int, round_seed: int, token: str,
                    result: FuzzResult) -> None:
    headers = {"Authorization": f"Bearer {token}"}

    @seed(round_seed)
    @given(case=operation.as_strategy())
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def call(case: Any) -> None:
        result.cases += 1
        try:
            response = case.call(headers=headers, timeout=60)
            if response.status_code >= 500:
                result.server_errors += 1
            case.validate_response(response, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as err:  # a failed check: counted, go on
            for failure in getattr(err, "exceptions", [err]):
                result.failures[getattr(failure, "title", type(failure).__name__)] += 1

    call()
