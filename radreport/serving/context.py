"""A report request's clinical context on its way to Triton: one JSON object per image.

The indication, age and sex a client sent travel as the optional BYTES input
``context_json`` of ``radreport_report``, ``radreport_report_stream`` and
``radreport_report_bls``, one row per image:
``{"indication": str | null, "age_years": int | null, "sex": "F"|"M"|"O"|"U" | null}`` or
``null``. The models parse it into :class:`ClinicalContext` for the v2 decoder prompt
(a v1 model folder ignores it). Without the input, or with a ``null`` row, an image has no
context: DICOM pushes carry none, and the model is trained to work without it.

Parsing is strict (it is our own client's format) and its errors never echo a value, so
no patient detail reaches a log or an error response.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from radreport.model.prompt import ClinicalContext

CONTEXT_INPUT = "context_json"
SEXES = ("F", "M", "O", "U")
MAX_AGE_YEARS = 130
MAX_INDICATION_CHARS = 1000
FIELDS = frozenset({"indication", "age_years", "sex"})


def context_json(context: ClinicalContext | None) -> bytes:
    """One row of ``context_json``."""
    if context is None:
        return b"null"
    return json.dumps({"indication": context.indication, "age_years": context.age_years,
                       "sex": context.sex}).encode()


def context_tensor(contexts: Sequence[ClinicalContext | None]) -> np.ndarray:
    """The ``context_json`` input of a batch: (B, 1) bytes objects."""
    return np.array([[context_json(c)] for c in contexts], dtype=object)


def parse_contexts(rows: np.ndarray | None, images: int) -> list[ClinicalContext | None]:
    """Each image's context from a request's ``context_json`` (None: the input was not sent).

    Raises ValueError, naming the row and field but never the value, on a malformed row or
    a row count other than the request's image count.
    """
    if rows is None:
        return [None] * images
    flat = np.asarray(rows, dtype=object).reshape(-1)
    if flat.size != images:
        raise ValueError(f"{CONTEXT_INPUT} has {flat.size} rows for {images} images")
    return [_parse_row(row, i) for i, row in enumerate(flat)]


def _parse_row(raw: Any, row: int) -> ClinicalContext | None:
    where = f"{CONTEXT_INPUT} row {row}"
    try:
        data = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{where} is not JSON") from None
    if data is None:
        return None
    if not isinstance(data, dict) or not set(data) <= FIELDS:
        raise ValueError(f"{where} must be null or an object with only {sorted(FIELDS)}")
    context = ClinicalContext(indication=_indication(data.get("indication"), where),
                              age_years=_age(data.get("age_years"), where),
                              sex=_sex(data.get("sex"), where))
    return None if context == ClinicalContext() else context


def _indication(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_INDICATION_CHARS:
        raise ValueError(f"{where}: indication must be text of at most "
                         f"{MAX_INDICATION_CHARS} characters")
    return value.strip() or None


def _age(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not (
            0 <= value <= MAX_AGE_YEARS):
        raise ValueError(f"{where}: age_years must be an integer from 0 to {MAX_AGE_YEARS}")
    return value


def _sex(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if value not in SEXES:
        raise ValueError(f"{where}: sex must be one of {', '.join(SEXES)}")
    return str(value)
