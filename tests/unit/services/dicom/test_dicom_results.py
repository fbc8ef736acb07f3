"""The DICOM results builders: a TID 1500 SR and SC overlays from phantom CR and DX sources.

Every SR/SC assertion reads the *written* file back (``to_bytes`` then ``dcmread``), so what
is checked is what a PACS would receive. The ``integration`` tests run dicom3tools'
``dciodvfy`` and dcmtk's ``dsrdump`` on those files.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
)

from radreport.data.phantoms import generate_study
from radreport.data.phantoms.dicom import DicomOptions, write_study_dicom
from services.common.schemas import Draft, DraftSentence, LetterboxInfo, StructuredFinding
from services.dicom.results import (
    AI_NOTICE,
    PRIVATE_SCHEME,
    build_overlay_sc,
    build_report_sr,
    rectangle,
    source_header,
    to_bytes,
)

SIZE = 256
MODEL = "radreport-vit-gpt:0.3.1"
SOFTWARE = "radreport 0.1.0"
REPORT_ID = "6f1c2b9e-5d4a-4c3b-9a8e-7f6d5c4b3a21"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
# One CR (MONOCHROME1, uncompressed) and one DX (MONOCHROME2, JPEG-LS): only the header
# is read, so the source's pixel encoding must not matter.
SOURCES = {
    "CR": DicomOptions("CR", "MONOCHROME1", 12, ExplicitVRLittleEndian),
    "DX": DicomOptions("DX", "MONOCHROME2", 14, JPEGLSLossless),
}
EFFUSION_BOX = (18, 150, 110, 236)
HEART_BOXES = [(96, 110, 200, 210), (120, 60, 150, 100)]

# dciodvfy's warnings that are expected, each with why it is not a defect.
EXPECTED_WARNINGS: dict[str, list[tuple[str, str]]] = {
    "SR": [
        (r"^Warning - Unrecognized defined term <99RADREPORT> for value 1 of attribute "
         r"<Coding Scheme Designator>$",
         "our private coding scheme (CheXpert labels without a SNOMED CT concept, the "
         "label-head probabilities, the safety net's read-out): PS3.3 8.1 allows "
         "designators starting with 99, declared in the Coding Scheme Identification "
         "Sequence; dciodvfy only knows PS3.16's list"),
    ],
    "SC": [],
}
# dsrdump's: dcmtk 3.6.7's VR checker skips UTF-8 text (a tool limitation, not a defect;
# the SR is UTF-8 on purpose, see services.dicom.results).
EXPECTED_DSRDUMP_WARNINGS = frozenset({
    "W: The VR checker does not support this Specific Character Set: ISO_IR 192",
})


def _heatmap(peak: tuple[int, int]) -> list[list[float]]:
    """A realistic 16x16 attention map: a Gaussian blob around ``peak``, summing to 1."""
    rows, cols = np.mgrid[0:16, 0:16]
    blob = np.exp(-((rows - peak[0]) ** 2 + (cols - peak[1]) ** 2) / 4.0) + 1e-3
    return (blob / blob.sum()).tolist()


@pytest.fixture(scope="module")
def draft() -> Draft:
    return Draft(
        findings="Small right pleural effusion with adjacent atelectasis. "
                 "No pneumothorax – lungs otherwise clear.",
        impression="Small right pleural effusion. Mildly enlarged cardiac silhouette.",
        sentences=[
            DraftSentence(text="Small right pleural effusion with adjacent atelectasis.",
                          section="findings", boxes=[EFFUSION_BOX], heatmap=_heatmap((12, 3)),
                          labels=["Pleural Effusion", "Atelectasis"]),
            DraftSentence(text="No pneumothorax – lungs otherwise clear.", section="findings",
                          boxes=[], heatmap=_heatmap((7, 8)), labels=[]),
            DraftSentence(text="Mildly enlarged cardiac silhouette.", section="impression",
                          boxes=HEART_BOXES, heatmap=_heatmap((9, 8)),
                          labels=["Enlarged Cardiomediastinum"]),
        ],
        label_probs={"Pleural Effusion": 0.88, "Atelectasis": 0.61,
                     "Enlarged Cardiomediastinum": 0.58, "Pneumothorax": 0.04},
        token_ids=[5, 81, 33, 2],
        model_version=MODEL,
        letterbox=LetterboxInfo(size=384, scale=1.5, pad_x=0.0, pad_y=0.0,
                                original_shape=(SIZE, SIZE)),
        attention_entropy=2.7,
        inference_ms=184.2,
    )


@pytest.fixture(scope="module")
def findings() -> list[StructuredFinding]:
    return [
        StructuredFinding(finding="Pleural Effusion", present=True, confidence=0.88,
                          severity="mild", bounding_box=EFFUSION_BOX, is_critical=True,
                          mentioned_in_text=True, sentence_indices=[0]),
        StructuredFinding(finding="Pneumothorax", present=False, confidence=0.04,
                          is_critical=True, mentioned_in_text=True, sentence_indices=[1]),
    ]


@dataclass(frozen=True)
class Built:
    """One source and what the builders made of it, written and read back."""

    path: Path
    source: Dataset
    sr_path: Path
    sr: Dataset
    sc_path: Path
    sc: Dataset
    overlay: np.ndarray


def _overlay(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(SIZE, SIZE, 3), dtype=np.uint8)


@pytest.fixture(scope="module", params=sorted(SOURCES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          draft: Draft, findings: list[StructuredFinding]) -> Built:
    modality: str = request.param
    out = tmp_path_factory.mktemp(modality)
    path = write_study_dicom(generate_study(11, SIZE), out, SOURCES[modality])
    source = source_header(path)
    sr = build_report_sr(source, draft, findings, report_id=REPORT_ID,
                         software_version=SOFTWARE, institution="RADREPORT TEST SITE")
    overlay = _overlay(3)
    sc = build_overlay_sc(source, overlay, report_id=REPORT_ID,
                          sentence_text=draft.sentences[0].text, manufacturer="radreport",
                          software_version=SOFTWARE)
    sr_path, sc_path = out / "sr.dcm", out / "sc.dcm"
    sr_path.write_bytes(to_bytes(sr))
    sc_path.write_bytes(to_bytes(sc))
    return Built(path, source, sr_path, pydicom.dcmread(sr_path), sc_path,
                 pydicom.dcmread(sc_path), overlay)


# --- SR content tree helpers ------------------------------------------------------------


def _items(node: Dataset) -> Iterator[Dataset]:
    """Every content item below ``node``, depth first."""
    for item in node.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _name(item: Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _groups(sr: Dataset) -> dict[str, Dataset]:
    """Measurement groups by tracking identifier."""
    found = {}
    for item in _items(sr):
        if item.ValueType == "CONTAINER" and _name(item) == "Measurement Group":
            ids = [c.TextValue for c in item.ContentSequence
                   if c.ValueType == "TEXT" and _name(c) == "Tracking Identifier"]
            assert len(ids) == 1
            found[ids[0]] = item
    return found


def _texts(node: Dataset) -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for item in _items(node):
        if item.ValueType == "TEXT":
            texts.setdefault(_name(item), []).append(str(item.TextValue))
    return texts


def _referenced_uids(node: Dataset) -> set[str]:
    return {str(ref.ReferencedSOPInstanceUID) for item in _items(node)
            if item.ValueType == "IMAGE" for ref in item.ReferencedSOPSequence}


# --- the SR -----------------------------------------------------------------------------


def test_sr_joins_the_source_study_in_a_new_series(built: Built) -> None:
    sr, source = built.sr, built.source
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert sr.Modality == "SR"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
                    "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
                    "IssuerOfPatientID", "PatientIdentityRemoved"):
        assert sr[keyword].value == source[keyword].value, keyword
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert sr.SOPInstanceUID != source.SOPInstanceUID
    assert (sr.SeriesNumber, sr.InstanceNumber) == (9001, 1)
    assert sr.InstitutionName == "RADREPORT TEST SITE"
    assert sr.SoftwareVersions == SOFTWARE
    # An unreviewed draft: complete as the model's output, neither verified nor final.
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert "VerifyingObserverSequence" not in sr
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.StudyInstanceUID
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    ref = evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        source.SOPClassUID, source.SOPInstanceUID)
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"


def test_sr_boxes_are_closed_polylines_on_the_source_image(built: Built) -> None:
    groups = _groups(built.sr)
    expected = {"sentence-0": EFFUSION_BOX, "sentence-2-box-0": HEART_BOXES[0],
                "sentence-2-box-1": HEART_BOXES[1]}
    for name, box in expected.items():
        regions = [i for i in _items(groups[name]) if i.ValueType == "SCOORD"]
        assert len(regions) == 1, name
        region = regions[0]
        assert _name(region) == "Image Region"
        assert region.GraphicType == "POLYLINE"
        points = np.asarray(region.GraphicData, dtype=float).reshape(-1, 2)
        x0, y0, x1, y1 = box
        assert points.tolist() == [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        assert np.array_equal(points, rectangle(box))
        (source_item,) = region.ContentSequence
        assert source_item.RelationshipType == "SELECTED FROM"
        ref = source_item.ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == built.source.SOPInstanceUID
        assert ref.ReferencedSOPClassUID == built.source.SOPClassUID
        assert groups[name].ContentTemplateSequence[0].TemplateIdentifier == "1410"


def test_sentence_without_boxes_references_the_whole_image(built: Built) -> None:
    group = _groups(built.sr)["sentence-1"]
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
    assert not [i for i in _items(group) if i.ValueType == "SCOORD"]
    assert _referenced_uids(group) == {built.source.SOPInstanceUID}
    assert _texts(group)["Finding"] == ["No pneumothorax – lungs otherwise clear."]


def test_every_group_has_a_distinct_tracking_uid(built: Built) -> None:
    groups = _groups(built.sr)
    assert sorted(groups) == ["finding-pleural-effusion", "finding-pneumothorax", "sentence-0",
                              "sentence-1", "sentence-2-box-0", "sentence-2-box-1"]
    uids = [c.UID for g in groups.values() for c in g.ContentSequence
            if c.ValueType == "UIDREF" and _name(c) == "Tracking Unique Identifier"]
    assert len(uids) == len(set(uids)) == len(groups)


def test_report_text_is_in_the_sr(built: Built, draft: Draft) -> None:
    texts = _texts(built.sr)
    assert draft.findings in texts["Finding"]
    assert draft.impression in texts["Impression"]
    groups = _groups(built.sr)
    assert _texts(groups["sentence-0"])["Finding"] == [draft.sentences[0].text]
    for name in ("sentence-2-box-0", "sentence-2-box-1"):  # an impression sentence
        assert _texts(groups[name])["Impression"] == [draft.sentences[2].text]
    (notice,) = texts["Comment"]
    assert notice.startswith(AI_NOTICE) and MODEL in notice and REPORT_ID in notice
    # the top-level container is TID 1500's "Qualitative Evaluations" (UMLS C0034375)
    top = [i for i in built.sr.ContentSequence if i.ValueType == "CONTAINER"]
    assert [(c.ConceptNameCodeSequence[0].CodeValue, _name(c)) for c in top] == [
        ("126010", "Imaging Measurements"), ("C0034375", "Qualitative Evaluations")]


def test_observer_is_the_model_as_a_device(built: Built) -> None:
    context = {(_name(i), i.ValueType): i for i in built.sr.ContentSequence
               if i.RelationshipType == "HAS OBS CONTEXT"}
    observer_type = context[("Observer Type", "CODE")].ConceptCodeSequence[0]
    assert (observer_type.CodeValue, observer_type.CodingSchemeDesignator) == ("121007", "DCM")
    assert context[("Device Observer Name", "TEXT")].TextValue == MODEL
    assert context[("Device Observer Manufacturer", "TEXT")].TextValue == "radreport"
    assert context[("Device Observer Model Name", "TEXT")].TextValue == SOFTWARE
    assert ("Person Observer Name", "PNAME") not in context
    # highdicom reads it back the same way
    report = hd.sr.MeasurementReport.from_sequence(
        [hd.sr.ContainerContentItem.from_dataset(built.sr)], copy=True)
    (device,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    assert device.observer_identifying_attributes.name == MODEL
    assert not report.get_observer_contexts(observer_type=codes.DCM.Person)
    # and every group says an AI algorithm made it
    for group in _groups(built.sr).values():
        family = [i.ConceptCodeSequence[0] for i in _items(group)
                  if i.ValueType == "CODE" and _name(i) == "Algorithm Family"]
        assert [(f.CodeValue, f.CodeMeaning) for f in family] == [
            ("123110", "Artificial Intelligence")]


def test_procedure_and_finding_codes(built: Built) -> None:
    procedure = [i.ConceptCodeSequence[0] for i in built.sr.ContentSequence
                 if _name(i) == "Procedure reported"]
    assert [(c.CodeValue, c.CodingSchemeDesignator) for c in procedure] == [("36554-4", "LN")]
    assert built.sr.PerformedProcedureCodeSequence[0].CodeValue == "36554-4"
    groups = _groups(built.sr)

    def coded(group: Dataset) -> dict[str, tuple[str, str]]:
        return {_name(i): (i.ConceptCodeSequence[0].get("CodeValue")
                           or i.ConceptCodeSequence[0].get("LongCodeValue"),
                           i.ConceptCodeSequence[0].CodingSchemeDesignator)
                for i in _items(group) if i.ValueType == "CODE"}

    sentence = coded(groups["sentence-0"])
    assert sentence["Finding"] == ("60046008", "SCT")  # SNOMED_FINDINGS, first label
    assert sentence["Pleural effusion"] == ("52101004", "SCT")  # Present
    assert sentence["Atelectasis"] == ("52101004", "SCT")
    assert sentence["Geometric purpose of region"] == ("75958009", "SCT")  # Bounded by
    # no SNOMED CT concept for this CheXpert label: our private scheme, declared
    assert coded(groups["sentence-2-box-0"])["Finding"] == (
        "enlarged-cardiomediastinum", PRIVATE_SCHEME)
    assert PRIVATE_SCHEME in {i.CodingSchemeDesignator
                              for i in built.sr.CodingSchemeIdentificationSequence}
    assert "Finding" not in coded(groups["sentence-1"])  # a sentence without labels

    effusion = coded(groups["finding-pleural-effusion"])
    assert effusion["Pleural effusion"] == ("52101004", "SCT")
    assert effusion["Severity"] == ("255604002", "SCT")  # mild
    assert coded(groups["finding-pneumothorax"])["Pneumothorax"] == ("272519000", "SCT")
    (probability,) = [i for i in _items(groups["finding-pleural-effusion"])
                      if i.ValueType == "NUM"]
    value = probability.MeasuredValueSequence[0]
    assert float(value.NumericValue) == pytest.approx(88.0)
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "%"


def test_sr_uids_are_stable_and_follow_the_content(
        built: Built, draft: Draft, findings: list[StructuredFinding]) -> None:
    again = build_report_sr(built.source, draft, findings, report_id=REPORT_ID,
                            software_version=SOFTWARE, institution="RADREPORT TEST SITE")
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (
        built.sr.SeriesInstanceUID, built.sr.SOPInstanceUID)
    edited = draft.model_copy(update={"impression": "Small right pleural effusion."})
    changed = build_report_sr(built.source, edited, findings, report_id=REPORT_ID,
                              software_version=SOFTWARE, institution="RADREPORT TEST SITE")
    assert changed.SeriesInstanceUID == built.sr.SeriesInstanceUID
    assert changed.SOPInstanceUID != built.sr.SOPInstanceUID
    other = build_report_sr(built.source, draft, findings, report_id="another-report",
                            software_version=SOFTWARE)
    assert other.SeriesInstanceUID != built.sr.SeriesInstanceUID
    for uid in (again.SeriesInstanceUID, again.SOPInstanceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64


@pytest.fixture(scope="module")
def safety_sr_path(built: Built, draft: Draft, findings: list[StructuredFinding]) -> Path:
    """The SR of a model v2 draft flagged out of distribution, written next to ``built``'s."""
    flagged = draft.model_copy(update={
        "calibrated_probs": {"Pleural Effusion": 0.81, "Pneumothorax": 0.07},
        "findings_present": ["Pleural Effusion", "Atelectasis"],
        "uncertain_findings": [], "calibrated_confidence": 0.0, "ood_score": 31.25,
        "ood_threshold": 20.5, "out_of_distribution": True})
    calibrated = [findings[0].model_copy(update={"calibrated_probability": 0.81}),
                  findings[1].model_copy(update={"calibrated_probability": 0.07})]
    sr = build_report_sr(built.source, flagged, calibrated, report_id=REPORT_ID,
                         software_version=SOFTWARE)
    path = built.sr_path.with_name("sr-safety.dcm")
    path.write_bytes(to_bytes(sr))
    return path


def _numbers(group: Dataset) -> dict[str, tuple[float, str]]:
    return {_name(i): (float(i.MeasuredValueSequence[0].NumericValue),
                       i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue)
            for i in _items(group) if i.ValueType == "NUM"}


def test_the_safety_net_is_in_the_sr(safety_sr_path: Path) -> None:
    sr = pydicom.dcmread(safety_sr_path)
    groups = _groups(sr)
    assert "study-safety" not in _groups(pydicom.dcmread(
        safety_sr_path.with_name("sr.dcm")))  # a v1 draft has no safety group
    safety = groups["study-safety"]
    assert safety.ContentTemplateSequence[0].TemplateIdentifier == "1501"
    assert _numbers(safety) == {
        "Calibrated probability that all finding decisions are right": (0.0, "%"),
        "Distance of the image from the model's training distribution": (31.25, "1"),
        "Out-of-distribution score threshold": (20.5, "1")}
    codes_used = {(i.ConceptNameCodeSequence[0].get("CodeValue")
                   or i.ConceptNameCodeSequence[0].get("LongCodeValue"),
                   i.ConceptNameCodeSequence[0].CodingSchemeDesignator)
                  for i in _items(safety) if i.ValueType in ("NUM", "CODE")}
    assert {("calibrated-confidence", PRIVATE_SCHEME), ("ood-score", PRIVATE_SCHEME),
            ("ood-threshold", PRIVATE_SCHEME),
            ("out-of-distribution", PRIVATE_SCHEME)} <= codes_used
    (verdict,) = [i.ConceptCodeSequence[0] for i in _items(safety)
                  if i.ValueType == "CODE"
                  and _name(i) == "Outside the model's training distribution"]
    assert (verdict.CodeValue, verdict.CodeMeaning) == ("373066001", "Yes")
    assert _numbers(groups["finding-pleural-effusion"]) == {
        "Model probability that the finding is present": (88.0, "%"),
        "Calibrated model probability that the finding is present": (81.0, "%")}
    assert any("outside the model's training distribution" in text
               for text in _texts(sr)["Comment"])


def test_box_outside_the_image_is_refused(built: Built, draft: Draft) -> None:
    wide = draft.model_copy(deep=True)
    wide.sentences[0].boxes = [(10, 10, SIZE + 1, 50)]
    with pytest.raises(ValueError, match=r"sentence 0 box 0 .* 256 columns x 256 rows"):
        build_report_sr(built.source, wide, [], report_id=REPORT_ID, software_version=SOFTWARE)


# --- the SC -----------------------------------------------------------------------------


def test_sc_overlay_joins_the_source_study(built: Built) -> None:
    sc, source = built.sc, built.source
    assert sc.SOPClassUID == SECONDARY_CAPTURE
    assert sc.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate",
                    "AccessionNumber", "StudyID", "PatientIdentityRemoved",
                    "PatientOrientation", "BodyPartExamined"):
        assert sc[keyword].value == source[keyword].value, keyword
    assert sc.SeriesInstanceUID not in (source.SeriesInstanceUID, built.sr.SeriesInstanceUID)
    assert sc.SOPInstanceUID != source.SOPInstanceUID
    assert (sc.SeriesNumber, sc.InstanceNumber) == (9002, 1)
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    assert np.array_equal(sc.pixel_array, built.overlay)


def test_sc_overlay_says_it_is_ai_output_with_text_burned_in(built: Built,
                                                              draft: Draft) -> None:
    sc = built.sc
    assert sc.BurnedInAnnotation == "YES"
    assert sc.ImageComments.startswith("AI-generated grounding overlay")
    assert draft.sentences[0].text in sc.ImageComments
    assert "AI-generated" in sc.DerivationDescription
    assert "Not for diagnosis" in sc.DerivationDescription
    assert "not for diagnosis" in sc.SeriesDescription
    assert sc.ImageType == ["DERIVED", "SECONDARY", "OTHER"]
    (ref,) = sc.SourceImageSequence
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        built.source.SOPClassUID, built.source.SOPInstanceUID)
    assert ref.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"


def test_sc_without_sentence_and_bad_arrays(built: Built) -> None:
    sc = build_overlay_sc(built.source, _overlay(3), report_id=REPORT_ID, sentence_text=None,
                          manufacturer="radreport", software_version=SOFTWARE, instance_number=2)
    assert sc.ImageComments == "AI-generated grounding overlay of a draft report sentence"
    assert sc.SeriesInstanceUID == built.sc.SeriesInstanceUID
    assert sc.SOPInstanceUID != built.sc.SOPInstanceUID
    for bad in (np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE, 4), np.uint8),
                np.zeros((SIZE, SIZE, 3), np.uint16)):
        with pytest.raises(ValueError, match="overlay_rgb"):
            build_overlay_sc(built.source, bad, report_id=REPORT_ID, sentence_text=None,
                             manufacturer="radreport", software_version=SOFTWARE)


@pytest.fixture()
def sparse_sc_path(built: Built, tmp_path: Path) -> Path:
    """An overlay (with a legend strip: taller than the source) of a source without Patient
    Orientation or Body Part Examined, both optional in some IODs."""
    source = copy.deepcopy(built.source)
    del source.PatientOrientation, source.BodyPartExamined
    sc = build_overlay_sc(source, np.zeros((SIZE + 40, SIZE, 3), np.uint8), report_id=REPORT_ID,
                          sentence_text=None, manufacturer="radreport", software_version=SOFTWARE)
    path = tmp_path / "sc.dcm"
    path.write_bytes(to_bytes(sc))
    return path


def test_sc_of_a_sparse_source(sparse_sc_path: Path) -> None:
    sc = pydicom.dcmread(sparse_sc_path)
    assert sc.PatientOrientation is None or sc.PatientOrientation == ""  # Type 2: unknown
    assert "PatientOrientation" in sc
    assert sc.BodyPartExamined == "CHEST"
    assert (sc.Rows, sc.Columns) == (SIZE + 40, SIZE)


# --- reading and writing ----------------------------------------------------------------


def test_source_header_reads_paths_and_bytes_without_pixels(built: Built) -> None:
    from_path = source_header(built.path)
    from_bytes = source_header(built.path.read_bytes())
    assert "PixelData" not in from_path and "PixelData" not in from_bytes
    assert from_path.SOPInstanceUID == from_bytes.SOPInstanceUID == built.source.SOPInstanceUID


def test_to_bytes_writes_part10_explicit_vr_without_changing_the_dataset(
        tmp_path: Path) -> None:
    options = DicomOptions("CR", "MONOCHROME2", 10, ImplicitVRLittleEndian)
    source = pydicom.dcmread(write_study_dicom(generate_study(5, SIZE), tmp_path, options))
    assert source.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    data = to_bytes(source)
    assert data[128:132] == b"DICM"
    back = pydicom.dcmread(BytesIO(data))
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
    assert np.array_equal(back.pixel_array, source.pixel_array)
    assert source.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian  # untouched
    compressed = DicomOptions("CR", "MONOCHROME2", 10, JPEGLSLossless)
    encoded = pydicom.dcmread(write_study_dicom(generate_study(5, SIZE), tmp_path, compressed))
    with pytest.raises(ValueError, match="transfer syntax"):
        to_bytes(encoded)


# --- validators -------------------------------------------------------------------------


def _tool(name: str, package: str) -> str:
    """The validators must be there: CI installs them; a missing one fails, never skips."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH; install {package} (apt-get install {package})")
    return path


def _check_dciodvfy(path: Path, kind: str, iod: str) -> None:
    done = subprocess.run([_tool("dciodvfy", "dicom3tools"), str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    lines = output.splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"dciodvfy on the {kind}:\n{output}"
    patterns = [re.compile(pattern) for pattern, _reason in EXPECTED_WARNINGS[kind]]
    unexpected = [line for line in lines if line.startswith("Warning")
                  and not any(p.search(line) for p in patterns)]
    assert not unexpected, f"dciodvfy on the {kind}:\n{output}"
    assert iod in output, output


@pytest.mark.integration
def test_dciodvfy_finds_no_errors_in_the_sr(built: Built) -> None:
    _check_dciodvfy(built.sr_path, "SR", "Comprehensive3DSR")


@pytest.mark.integration
def test_dciodvfy_finds_no_errors_in_the_sr_with_the_safety_net(safety_sr_path: Path) -> None:
    _check_dciodvfy(safety_sr_path, "SR", "Comprehensive3DSR")


@pytest.mark.integration
def test_dciodvfy_finds_no_errors_in_the_sc(built: Built) -> None:
    _check_dciodvfy(built.sc_path, "SC", "SCImage")


@pytest.mark.integration
def test_dciodvfy_finds_no_errors_in_the_sc_of_a_sparse_source(sparse_sc_path: Path) -> None:
    _check_dciodvfy(sparse_sc_path, "SC", "SCImage")


@pytest.mark.integration
@pytest.mark.parametrize("name", ["sr.dcm", "sr-safety.dcm"])
def test_dsrdump_reads_the_sr_content_tree(built: Built, safety_sr_path: Path,
                                           name: str) -> None:
    """dcmtk checks the tree against Comprehensive 3D SR's relationship constraints."""
    done = subprocess.run([_tool("dsrdump", "dcmtk"), "+Pl", str(built.sr_path.with_name(name))],
                          capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    problems = [line for line in output.splitlines() if line.startswith(("W:", "E:", "F:"))
                and line not in EXPECTED_DSRDUMP_WARNINGS]
    assert not problems, output
    assert "Comprehensive 3D SR Document" in output
    assert "Pleural effusion" in output
