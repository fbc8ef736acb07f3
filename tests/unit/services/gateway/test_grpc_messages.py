"""Our schemas as gRPC messages: compact grounding maps, sentences, and request checks."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from radreport.v1 import report_pb2 as pb
from radreport.v1 import report_service_pb2 as service_pb
from services.common.schemas import ReportPublic, ReportStatus, StructuredFinding
from services.gateway.grpc_api import client_of
from services.gateway.grpc_messages import (
    BadRequest,
    grounding_map,
    report,
    request_fields,
    sentence,
    timestamp,
)

LETTERBOX = {"size": 256, "scale": 0.25, "pad_x": 0.0, "pad_y": 32.0,
             "original_shape": [768, 1024]}


def test_a_grounding_map_is_one_byte_per_cell_scaled_to_its_peak() -> None:
    heat = np.random.default_rng(0).random((16, 16))
    heat /= heat.sum()
    compact = grounding_map(heat.tolist(), LETTERBOX)
    assert compact.grid == 16 and len(compact.cells) == 256
    cells = np.frombuffer(compact.cells, np.uint8).reshape(16, 16)
    assert cells.max() == 255 and compact.max_weight == pytest.approx(heat.max())
    np.testing.assert_allclose(cells / 255 * compact.max_weight, heat,
                               atol=compact.max_weight / 510 + 1e-9)
    assert (compact.letterbox.original_height, compact.letterbox.original_width) == (768, 1024)
    assert compact.letterbox.pad_y == 32.0


def test_an_empty_map_stays_zero() -> None:
    compact = grounding_map(np.zeros((16, 16)).tolist(), None)
    assert compact.max_weight == 0 and set(compact.cells) == {0}
    assert not compact.HasField("letterbox")


def test_a_sentence_keeps_its_boxes_labels_and_section() -> None:
    message = sentence(3, {"text": "Small left pleural effusion.", "section": "impression",
                           "boxes": [[10, 20, 30, 40]], "labels": ["Pleural Effusion"],
                           "heatmap": np.full((16, 16), 1 / 256).tolist()}, LETTERBOX,
                       "/api/v1/reports/RPT-1/sentences/3/overlay.png")
    assert (message.index, message.section, message.text) == (
        3, pb.SECTION_IMPRESSION, "Small left pleural effusion.")
    assert [(b.x0, b.y0, b.x1, b.y1) for b in message.boxes] == [(10, 20, 30, 40)]
    assert list(message.labels) == ["Pleural Effusion"]
    assert set(message.grounding.cells) == {255}
    without_map = sentence(0, {"text": "x.", "section": "findings", "boxes": []}, None)
    assert not without_map.HasField("grounding")


def test_request_fields_are_validated_like_rest_without_echoing_input() -> None:
    request = service_pb.GenerateRequest(
        clinical_indication="cough", subject_reference="Patient/123",
        patient_metadata=service_pb.PatientMetadata(age=63, sex="F"), force=True)
    fields = request_fields(request, "STUDY-1")
    assert (fields.study_id, fields.clinical_indication, fields.force) == (
        "STUDY-1", "cough", True)
    assert fields.patient_metadata is not None and fields.patient_metadata.age == 63
    unset = request_fields(service_pb.GenerateRequest(), "STUDY-2")
    assert unset.patient_metadata is None and unset.subject_reference is None
    with pytest.raises(BadRequest, match="study_id") as caught:
        request_fields(service_pb.GenerateRequest(), "Jane Doe 1970-01-01!")
    assert "Jane" not in str(caught.value)
    with pytest.raises(BadRequest, match="age"):
        request_fields(service_pb.GenerateRequest(
            patient_metadata=service_pb.PatientMetadata(age=200)), "STUDY-3")


def test_timestamps_from_datetimes_and_epoch_seconds() -> None:
    assert timestamp(None) is None
    stamp = timestamp(1_700_000_000.25)
    assert stamp is not None and stamp.ToNanoseconds() == 1_700_000_000_250_000_000


@pytest.mark.parametrize(("peer", "host"), [("ipv4:10.1.2.3:5123", "10.1.2.3"),
                                             ("ipv6:[::1]:5123", "::1"),
                                             ("unix:/tmp/socket", "unix"), ("", None)])
def test_the_callers_address_is_its_host(peer: str, host: str | None) -> None:
    assert client_of(SimpleNamespace(peer=lambda: peer)) == host  # type: ignore[arg-type]


def _public(**fields: Any) -> ReportPublic:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    return ReportPublic(report_id="RPT-1", study_id="STUDY-1", status=ReportStatus.completed,
                        grounding_map_url="/g", fhir_url="/f", model_version="m:2",
                        created_at=now, updated_at=now, **fields)


def test_a_report_carries_the_safety_net() -> None:
    finding = StructuredFinding(finding="Pneumothorax", present=True, confidence=0.4,
                                calibrated_probability=0.55, is_critical=True,
                                mentioned_in_text=True, sentence_indices=[0])
    message = report(_public(
        confidence=0.9, calibrated_confidence=0.0, ood_score=31.5, ood_threshold=20.0,
        out_of_distribution=True, uncertain_findings=["Pneumothorax"],
        findings_structured=[finding], requires_radiologist_review=True,
        review_reasons=["outside the model's training distribution"]), None)
    assert message.confidence == pytest.approx(0.9)  # head/text agreement, as before
    assert message.HasField("calibrated_confidence") and message.calibrated_confidence == 0.0
    assert (message.ood_score, message.ood_threshold) == (31.5, 20.0)
    assert message.out_of_distribution
    assert list(message.uncertain_findings) == ["Pneumothorax"]
    (structured,) = message.findings_structured
    assert structured.calibrated_probability == pytest.approx(0.55)
    assert structured.confidence == pytest.approx(0.4)


def test_absent_safety_values_stay_absent() -> None:
    finding = StructuredFinding(finding="Edema", present=True, confidence=0.7,
                                is_critical=False, mentioned_in_text=True)
    message = report(_public(findings_structured=[finding]), None)
    for name in ("calibrated_confidence", "ood_score", "ood_threshold", "confidence"):
        assert not message.HasField(name), name
    assert not message.out_of_distribution and not message.uncertain_findings
    assert not message.findings_structured[0].HasField("calibrated_probability")
