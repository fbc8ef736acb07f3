"""The clinical context on its way to Triton: the stored request -> ``context_json`` -> the
``ClinicalContext`` the model's prompt reads; strict, and never echoing a patient detail."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radreport.model.prompt import ClinicalContext
from radreport.serving.client import triton_inputs
from radreport.serving.context import (
    CONTEXT_INPUT,
    context_json,
    context_tensor,
    parse_contexts,
)
from services.inference.context import clinical_context

FULL = ClinicalContext(indication="Dyspnea, rule out effusion", age_years=67, sex="F")


def test_contexts_round_trip_row_by_row() -> None:
    contexts = [FULL, None, ClinicalContext(age_years=0), ClinicalContext(sex="U")]
    rows = context_tensor(contexts)
    assert rows.shape == (4, 1) and rows.dtype == object
    assert parse_contexts(rows, 4) == contexts
    assert json.loads(context_json(FULL)) == {"indication": "Dyspnea, rule out effusion",
                                              "age_years": 67, "sex": "F"}


def test_no_input_means_no_context_for_every_image() -> None:
    assert parse_contexts(None, 3) == [None, None, None]


def test_empty_or_blank_contexts_are_none() -> None:
    rows = np.array([[b"{}"], [b'{"indication": "  ", "age_years": null}'], [b"null"]],
                    dtype=object)
    assert parse_contexts(rows, 3) == [None, None, None]


@pytest.mark.parametrize(("row", "problem"), [
    (b"not json John Doe", "not JSON"),
    (b'["Jane Doe"]', "object"),
    (b'{"name": "Jane Doe"}', "object"),
    (b'{"age_years": 131}', "age_years"),
    (b'{"age_years": -1}', "age_years"),
    (b'{"age_years": "67"}', "age_years"),
    (b'{"age_years": true}', "age_years"),
    (b'{"sex": "female"}', "sex"),
    (b'{"indication": 42}', "indication"),
    (json.dumps({"indication": "x" * 1001}).encode(), "indication"),
])
def test_malformed_rows_are_refused_without_echoing_them(row: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_contexts(np.array([[row]], dtype=object), 1)
    message = str(caught.value)
    assert "row 0" in message
    for detail in ("John", "Jane", "131", "female", "42", "xxx"):
        assert detail not in message


def test_the_row_count_must_match_the_images() -> None:
    with pytest.raises(ValueError, match="1 rows for 2 images"):
        parse_contexts(context_tensor([FULL]), 2)


def test_the_stored_request_gives_the_context() -> None:
    request = {"study_id": "S-1", "clinical_indication": "Fever",
               "patient_metadata": {"age": 45, "sex": "M"}, "requested_by": "ris"}
    assert clinical_context(request) == ClinicalContext("Fever", 45, "M")
    assert clinical_context({"clinical_indication": None, "patient_metadata": {
        "age": None, "sex": "O"}}) == ClinicalContext(sex="O")
    # a DICOM push stores no context: the report is drafted without one
    assert clinical_context({"source": "dicom", "calling_aet": "PACS",
                             "requested_by": "dicom-gateway"}) is None
    assert clinical_context({"clinical_indication": "", "patient_metadata": None}) is None


def test_the_client_sends_context_json_only_when_there_is_a_context() -> None:
    images = np.zeros((2, 1, 8, 8), np.float32)
    assert [i.name() for i in triton_inputs(images, None)] == ["image"]
    assert [i.name() for i in triton_inputs(images, [None, None])] == ["image"]
    image, context = triton_inputs(images, [FULL, None])
    assert (image.name(), context.name()) == ("image", CONTEXT_INPUT)
    assert (context.datatype(), context.shape()) == ("BYTES", [2, 1])
    with pytest.raises(ValueError, match="1 contexts for 2 images"):
        triton_inputs(images, [FULL])
