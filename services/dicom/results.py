"""DICOM results of a draft report: a TID 1500 SR and Secondary Capture overlays.

Pure functions (no network, no settings) for the DICOM gateway, which sends what they build
back into the PACS study the image came from. Everything is built with highdicom, whose
constructors validate, so an object returned here is a valid object; the tests also run
dicom3tools' ``dciodvfy`` on the written files.

Both kinds of object join the *source* study (same Study Instance UID; Patient and Study
modules copied from the source header) in a new series, and both say they are AI output:

- :func:`build_report_sr`: a Comprehensive 3D SR holding a TID 1500 Measurement Report
  whose only observer is a DEVICE (TID 1004: the model), with Verification Flag
  UNVERIFIED and Preliminary Flag PRELIMINARY; every measurement group also carries the
  model as TID 4019 Algorithm Identification, family (DCM 123110) "Artificial
  Intelligence", and a top-level comment says "AI-generated draft".
- :func:`build_overlay_sc`: a Secondary Capture image per sentence, Burned In Annotation
  YES, Image Comments and Derivation Description saying "AI-generated ... not for
  diagnosis".

UIDs are ``2.25`` UUID-derived (PS3.5 B.2) and deterministic: series from the study and
report, instances from a digest of their content as well. A retried send therefore stores
the same instance again instead of a duplicate, and changed content gets a new SOP Instance
UID (PS3.3 C.12.1.1.1 forbids re-using one for different content).

Text is written as UTF-8 (Specific Character Set ISO_IR 192, PS3.3 C.12.1.1.2): the
report is free text from the model, and the source's character set need not cover it.

PS3.3 / PS3.16 section numbers are from the 2024 editions.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import uuid
from io import BytesIO
from typing import Final

import highdicom as hd
import numpy as np
import pydicom
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sc import SCImage
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from services.common.schemas import BoundingBox, Draft, DraftSentence, StructuredFinding
from services.fhir.report import (
    CALIBRATED_CONFIDENCE,
    CALIBRATED_PROBABILITY,
    CONFIDENCE,
    LOINC,
    OOD_SCORE,
    OOD_WARNING,
    REPORT_CODE,
    SEVERITY,
    SEVERITY_VALUES,
    SNOMED,
    SNOMED_FINDINGS,
)

# Namespace of our name-based UIDs (fixed forever: changing it changes every UID)
_UID_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "https://radreport.example/dicom")
UTF8: Final = "ISO_IR 192"

# FHIR code system URLs -> DICOM Coding Scheme Designators (PS3.16 8, Table 8-1)
_DESIGNATORS: Final[dict[str, str]] = {SNOMED: "SCT", LOINC: "LN"}

# Our private coding scheme (PS3.3 8.1.2: private designators start with "99") for what no
# standard terminology names exactly: the CheXpert labels without a SNOMED CT concept and
# the label head's probabilities, the safety net's read-out. Same code values as the FHIR
# bundle's local code systems.
PRIVATE_SCHEME: Final = "99RADREPORT"
PRIVATE_SCHEME_ITEM: Final = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME, name="radreport local codes",
    responsible_organization="radreport")


def _from_fhir(coding: dict[str, str]) -> CodedConcept:
    """A FHIR coding of services.fhir.report as a DICOM coded concept: one source of codes."""
    return CodedConcept(coding["code"], _DESIGNATORS[coding["system"]], coding["display"])


# TID 1500 row "Procedure reported" (CID 100 is extensible): the same LOINC code as the FHIR
# DiagnosticReport, 36554-4 "XR Chest Single view" (one frontal radiograph per study).
PROCEDURE_REPORTED: Final = _from_fhir(REPORT_CODE)
# CID 240 (Present-Absent): the DICOM context group's SNOMED codes. (The FHIR bundle's
# "Absent" is 2667000; DICOM's group uses 272519000, so this one is not imported.)
PRESENT: Final = CodedConcept(*codes.SCT.Present)
ABSENT: Final = CodedConcept(*codes.SCT.Absent)
SEVERITY_CONCEPT: Final = _from_fhir(SEVERITY)
SEVERITY_CODES: Final = {name: _from_fhir(c) for name, c in SEVERITY_VALUES.items()}
CONFIDENCE_CONCEPT: Final = CodedConcept(CONFIDENCE["code"], PRIVATE_SCHEME,
                                         CONFIDENCE["display"])
CALIBRATED_PROBABILITY_CONCEPT: Final = CodedConcept(
    CALIBRATED_PROBABILITY["code"], PRIVATE_SCHEME, CALIBRATED_PROBABILITY["display"])
# The study-level safety net (model v2): calibrated confidence, OOD score, threshold, verdict
CALIBRATED_CONFIDENCE_CONCEPT: Final = CodedConcept(
    CALIBRATED_CONFIDENCE["code"], PRIVATE_SCHEME, CALIBRATED_CONFIDENCE["display"])
OOD_SCORE_CONCEPT: Final = CodedConcept(OOD_SCORE["code"], PRIVATE_SCHEME, OOD_SCORE["display"])
OOD_THRESHOLD_CONCEPT: Final = CodedConcept("ood-threshold", PRIVATE_SCHEME,
                                            "Out-of-distribution score threshold")
OUT_OF_DISTRIBUTION_CONCEPT: Final = CodedConcept(
    "out-of-distribution", PRIVATE_SCHEME, "Outside the model's training distribution")
YES: Final = CodedConcept(*codes.SCT.Yes)
NO: Final = CodedConcept(*codes.SCT.No)
PERCENT: Final = CodedConcept("%", "UCUM", "%")
NO_UNITS: Final = CodedConcept(*codes.UCUM.NoUnits)  # ("1", UCUM, "no units")
# Free-text items: CID 7002 (Diagnostic Imaging Report Elements) concepts, as in TID 2000.
FINDING_TEXT: Final = CodedConcept(*codes.DCM.Finding)  # (121071, DCM, "Finding")
IMPRESSION_TEXT: Final = CodedConcept(*codes.DCM.Impression)  # (121073, DCM, "Impression")
COMMENT_TEXT: Final = CodedConcept(*codes.DCM.Comment)  # (121106, DCM, "Comment")
# TID 1500 row 12: the report-level container of qualitative evaluations (CODE or TEXT)
QUALITATIVE_EVALUATIONS: Final = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
# CID 219 (Geometry Graphical Representation): the box bounds the finding
BOUNDED_BY: Final = CodedConcept(*codes.SCT.BoundedBy)
# CID 7162 (Algorithm Families)
ARTIFICIAL_INTELLIGENCE: Final = CodedConcept(*codes.DCM.ArtificialIntelligence)
# CID 7202 (Source Image Purposes of Reference): the overlay is computed from the source
SOURCE_FOR_PROCESSING: Final = CodedConcept(*codes.DCM.SourceImageForImageProcessingOperation)

SR_SERIES_DESCRIPTION: Final = "AI draft report (unverified)"
SC_SERIES_DESCRIPTION: Final = "AI grounding overlays - not for diagnosis"
AI_NOTICE: Final = ("AI-generated draft, not verified by a radiologist; "
                    "not for diagnostic use without review.")


# --- reading ---------------------------------------------------------------------------


def source_header(source: str | os.PathLike[str] | bytes) -> Dataset:
    """The source image's header without pixel data: all the builders need, read cheaply.

    Tolerant when reading: whatever pydicom can parse is accepted here; the builders check
    what they use.
    """
    fp: str | os.PathLike[str] | BytesIO = BytesIO(source) if isinstance(source, bytes) else source
    return pydicom.dcmread(fp, stop_before_pixels=True)


# --- the SR ----------------------------------------------------------------------------


def build_report_sr(
    source: Dataset,
    draft: Draft,
    findings: list[StructuredFinding],
    *,
    report_id: str,
    series_number: int = 9001,
    instance_number: int = 1,
    manufacturer: str = "radreport",
    software_version: str,
    institution: str | None = None,
) -> Comprehensive3DSR:
    """The draft as a TID 1500 Measurement Report in a Comprehensive 3D SR of the source study.

    Content tree (PS3.16 TID 1500):

    - observer context: one DEVICE observer (TID 1004) named ``draft.model_version``, so
      a reader sees the author is software, not a person;
    - procedure reported: LOINC 36554-4 "XR Chest Single view";
    - "Imaging Measurements":

      * per sentence box, a TID 1410 planar ROI group: tracking identifier
        ``sentence-<i>`` (``sentence-<i>-box-<j>`` when the sentence has several boxes,
        TID 1410 allowing one region per group), the box as a closed 2D SCOORD POLYLINE
        (5 points) on the source image, geometric purpose "Bounded by", finding type the
        sentence's first label; a sentence without boxes gets a TID 1501 group that
        references the source image instead (TID 1410 requires a region);
      * per structured finding, a TID 1501 image-level group ``finding-<label>``: present
        or absent, the label head's probability (%), its calibrated probability (%) when
        served, and the severity when known;
      * when the draft has the safety net's read-out, a TID 1501 group ``study-safety``:
        the calibrated confidence (%), the out-of-distribution score and its threshold
        (no units), and CODE "Outside the model's training distribution" = Yes or No;

    - "Qualitative Evaluations" (TID 1500 row 12): the findings and impression text and
      the AI notice.

    Free text: highdicom's ``QualitativeEvaluation`` only takes coded values, but TID 1501
    and TID 1410 allow TEXT qualitative evaluations ("coded questions with coded or text
    answers") and TID 1500 a report-level "Qualitative Evaluations" container, so the
    TEXT items are appended to the trees highdicom built. Each sentence's text is a TEXT
    "Finding" or "Impression" (its section) in its group; every label it asserts is a
    CODE "<label>" = "Present".

    Flags (PS3.3 C.17.2, SR Document General Module): Completion Flag COMPLETE, because
    the document holds everything its observer (the model) produced for this study and
    nothing more from that observer will follow (the radiologist's reading is another
    document, by another observer); Verification Flag UNVERIFIED, because no person
    accountable for the content has attested it; Preliminary Flag PRELIMINARY, because a
    draft awaiting review is not the definitive means of communicating the findings.

    Raises ValueError when a box lies outside the source image.
    """
    _check_source(source)
    rows, columns = int(source.Rows), int(source.Columns)
    algorithm = _algorithm(draft.model_version, manufacturer)
    groups: list[PlanarROIMeasurementsAndQualitativeEvaluations
                 | MeasurementsAndQualitativeEvaluations] = []
    for index, sentence in enumerate(draft.sentences):
        groups.extend(_sentence_groups(source, index, sentence, rows, columns, algorithm,
                                       report_id))
    groups.extend(_finding_group(source, finding, algorithm, report_id)
                  for finding in findings)
    safety = _safety_group(source, draft, algorithm, report_id)
    if safety is not None:
        groups.append(safety)

    device = DeviceObserverIdentifyingAttributes(
        uid=_uid("device", manufacturer, software_version, draft.model_version),
        name=draft.model_version, manufacturer_name=manufacturer, model_name=software_version)
    observation_context = ObservationContext(observer_device_context=ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    report = MeasurementReport(
        observation_context=observation_context,
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(_report_text(draft, report_id))

    study_uid = str(source.StudyInstanceUID)
    digest = _digest(draft.model_dump_json(), *(f.model_dump_json() for f in findings),
                     report_id, str(series_number), str(instance_number), manufacturer,
                     software_version, institution or "", str(source.SOPInstanceUID))
    sr = Comprehensive3DSR(
        evidence=[source],
        content=report,
        series_instance_uid=_uid(study_uid, report_id, "sr-series"),
        series_number=series_number,
        sop_instance_uid=_uid(study_uid, report_id, "sr", digest),
        instance_number=instance_number,
        manufacturer=manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=institution,
        performed_procedure_codes=[PROCEDURE_REPORTED],
        series_description=SR_SERIES_DESCRIPTION,
        software_versions=software_version,
        coding_schemes=[PRIVATE_SCHEME_ITEM],
        specific_character_set=UTF8,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    return sr


def _sentence_groups(
    source: Dataset, index: int, sentence: DraftSentence, rows: int, columns: int,
    algorithm: AlgorithmIdentification, report_id: str,
) -> list[PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations]:
    """The measurement groups of one sentence: one per box, or one for the whole image."""
    finding_type = _label_code(sentence.labels[0]) if sentence.labels else None
    evaluations = [QualitativeEvaluation(_label_code(label), PRESENT)
                   for label in sentence.labels]
    text = TextContentItem(
        name=FINDING_TEXT if sentence.section == "findings" else IMPRESSION_TEXT,
        value=sentence.text, relationship_type=RelationshipTypeValues.CONTAINS)
    study_uid = str(source.StudyInstanceUID)
    group: PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations
    if not sentence.boxes:
        name = f"sentence-{index}"
        group = MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=_uid(study_uid, report_id, "tracking", name), identifier=name),
            finding_type=finding_type,
            algorithm_id=algorithm,
            qualitative_evaluations=evaluations,
            source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
        )
        group[0].ContentSequence.append(text)
        return [group]
    groups: list[PlanarROIMeasurementsAndQualitativeEvaluations
                 | MeasurementsAndQualitativeEvaluations] = []
    for number, box in enumerate(sentence.boxes):
        _check_box(box, rows, columns, f"sentence {index} box {number}")
        name = f"sentence-{index}" if len(sentence.boxes) == 1 else f"sentence-{index}-box-{number}"
        region = ImageRegion(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=rectangle(box),
            source_image=SourceImageForRegion.from_source_image(source),
        )
        group = PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=_uid(study_uid, report_id, "tracking", name), identifier=name),
            referenced_region=region,
            finding_type=finding_type,
            algorithm_id=algorithm,
            qualitative_evaluations=evaluations,
            geometric_purpose=BOUNDED_BY,
        )
        group[0].ContentSequence.append(text)
        groups.append(group)
    return groups


def _finding_group(source: Dataset, finding: StructuredFinding,
                   algorithm: AlgorithmIdentification,
                   report_id: str) -> MeasurementsAndQualitativeEvaluations:
    """One label-head finding: present or absent, its probability, its severity."""
    label = _label_code(finding.finding)
    evaluations = [QualitativeEvaluation(label, PRESENT if finding.present else ABSENT)]
    if finding.severity is not None:
        evaluations.append(QualitativeEvaluation(SEVERITY_CONCEPT,
                                                 SEVERITY_CODES[finding.severity]))
    measurements = [Measurement(name=CONFIDENCE_CONCEPT,
                                value=round(100.0 * finding.confidence, 2), unit=PERCENT)]
    if finding.calibrated_probability is not None:
        measurements.append(Measurement(
            name=CALIBRATED_PROBABILITY_CONCEPT,
            value=round(100.0 * finding.calibrated_probability, 2), unit=PERCENT))
    return _measurement_group(source, report_id, f"finding-{_slug(finding.finding)}",
                              algorithm, measurements, evaluations, finding_type=label)


def _measurement_group(source: Dataset, report_id: str, name: str,
                       algorithm: AlgorithmIdentification, measurements: list[Measurement],
                       evaluations: list[QualitativeEvaluation] | None,
                       finding_type: CodedConcept | None = None,
                       ) -> MeasurementsAndQualitativeEvaluations:
    """A TID 1501 group on the whole source image, tracked by a UID derived from ``name``."""
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=_uid(str(source.StudyInstanceUID), report_id, "tracking", name),
            identifier=name),
        finding_type=finding_type,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=evaluations,
        source_images=[SourceImageForMeasurementGroup.from_source_image(source)],
    )


def _safety_group(source: Dataset, draft: Draft, algorithm: AlgorithmIdentification,
                  report_id: str) -> MeasurementsAndQualitativeEvaluations | None:
    """The study-level safety net: how far to trust every other group; None without it."""
    measurements = []
    if draft.calibrated_confidence is not None:
        measurements.append(Measurement(
            name=CALIBRATED_CONFIDENCE_CONCEPT,
            value=round(100.0 * draft.calibrated_confidence, 2), unit=PERCENT))
    evaluations = []
    if draft.ood_score is not None:
        measurements.append(Measurement(name=OOD_SCORE_CONCEPT, value=round(draft.ood_score, 4),
                                        unit=NO_UNITS))
        if draft.ood_threshold is not None:
            measurements.append(Measurement(name=OOD_THRESHOLD_CONCEPT,
                                            value=round(draft.ood_threshold, 4),
                                            unit=NO_UNITS))
        evaluations.append(QualitativeEvaluation(
            OUT_OF_DISTRIBUTION_CONCEPT, YES if draft.out_of_distribution else NO))
    if not measurements:
        return None
    return _measurement_group(source, report_id, "study-safety", algorithm, measurements,
                              evaluations or None)


def _report_text(draft: Draft, report_id: str) -> ContainerContentItem:
    """TID 1500 "Qualitative Evaluations": the report text and the AI notice, as TEXT."""
    container = ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                     relationship_type=RelationshipTypeValues.CONTAINS)
    contains = RelationshipTypeValues.CONTAINS
    container.ContentSequence = ContentSequence([
        TextContentItem(name=FINDING_TEXT, value=draft.findings, relationship_type=contains),
        TextContentItem(name=IMPRESSION_TEXT, value=draft.impression,
                        relationship_type=contains),
        TextContentItem(name=COMMENT_TEXT,
                        value=f"{AI_NOTICE} Model {draft.model_version}, report {report_id}.",
                        relationship_type=contains),
    ])
    if draft.out_of_distribution:
        container.ContentSequence.append(TextContentItem(
            name=COMMENT_TEXT, value=OOD_WARNING, relationship_type=contains))
    return container


def _algorithm(model_version: str, manufacturer: str) -> AlgorithmIdentification:
    """TID 4019 for the model; ``name:version`` (ModelInfo.model_version) is split in two."""
    name, _, version = model_version.partition(":")
    return AlgorithmIdentification(name=name or model_version, version=version or model_version,
                                   family=ARTIFICIAL_INTELLIGENCE, manufacturer=manufacturer)


def _label_code(label: str) -> CodedConcept:
    """A CheXpert label as SNOMED CT where one concept matches exactly, else a private code."""
    if label in SNOMED_FINDINGS:
        code, meaning = SNOMED_FINDINGS[label]
        return CodedConcept(code, "SCT", meaning)
    return CodedConcept(_slug(label), PRIVATE_SCHEME, label)


def rectangle(box: BoundingBox) -> np.ndarray:
    """A box as a closed polyline of 5 (column, row) points, the first repeated last.

    Boxes are pixel edges in the original image (x1, y1 exclusive), which is exactly the
    image-relative coordinate system of SCOORD Graphic Data (PS3.3 C.18.6.1.2 with
    C.10.5.1.2: 0.0\\0.0 is the top left corner of the top left pixel, Columns\\Rows the
    bottom right corner of the last), so the corners go in unchanged.
    """
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _check_box(box: BoundingBox, rows: int, columns: int, what: str) -> None:
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= columns and 0 <= y0 < y1 <= rows):
        raise ValueError(f"{what} {box} does not fit the source image of "
                         f"{columns} columns x {rows} rows")


# --- the overlays ----------------------------------------------------------------------


def build_overlay_sc(
    source: Dataset,
    overlay_rgb: np.ndarray,
    *,
    report_id: str,
    sentence_text: str | None,
    series_number: int = 9002,
    instance_number: int = 1,
    manufacturer: str,
    software_version: str,
) -> SCImage:
    """One grounding overlay (RGB, 8 bit) as a Secondary Capture image of the source study.

    The overlay has text and boxes burned in, so Burned In Annotation is YES (PS3.3
    C.7.6.1); Image Comments and Derivation Description say it is AI output, not for
    diagnosis; Source Image Sequence names the source image with purpose (DCM 121322)
    "Source image for image processing operation" (CID 7202). Conversion Type is SYN,
    "Synthetic Image" (PS3.3 C.8.6.1): software drew it, nothing was digitized.

    Raises ValueError unless ``overlay_rgb`` is a (rows, columns, 3) uint8 array.
    """
    _check_source(source)
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise ValueError(f"overlay_rgb must be a (rows, columns, 3) uint8 array, "
                         f"got {overlay_rgb.shape} {overlay_rgb.dtype}")
    study_uid = str(source.StudyInstanceUID)
    digest = _digest(hashlib.sha256(np.ascontiguousarray(overlay_rgb).tobytes()).hexdigest(),
                     str(overlay_rgb.shape), sentence_text or "", report_id, str(series_number),
                     str(instance_number), manufacturer, software_version,
                     str(source.SOPInstanceUID))
    sc = SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=overlay_rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=_uid(study_uid, report_id, "sc-series"),
        series_number=series_number,
        sop_instance_uid=_uid(study_uid, report_id, "sc", digest),
        instance_number=instance_number,
        manufacturer=manufacturer,
        patient_orientation=("L", "F"),  # replaced below by the source's
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=SC_SERIES_DESCRIPTION,
        software_versions=software_version,
        specific_character_set=UTF8,
    )
    # Same orientation as the source, verbatim (the overlay is the source image, coloured;
    # highdicom's enumeration would refuse oblique values such as "AL"). Type 2 (PS3.3
    # C.7.6.1.1.1): empty when the source does not say.
    sc.PatientOrientation = source.get("PatientOrientation") or []
    # The whole Patient and General Study modules as in the source, as the SR gets them.
    sc.copy_patient_and_study_information(source)
    # General Series: Laterality is Type 2C on the body part being paired or unknown; the
    # chest is unpaired, so saying so (as the source does) leaves it out correctly. This
    # service reports chest radiographs only, hence the fallback.
    sc.BodyPartExamined = source.get("BodyPartExamined") or "CHEST"
    sc.ConversionType = "SYN"
    sc.BurnedInAnnotation = "YES"
    what = "AI-generated grounding overlay of a draft report sentence"
    sc.ImageComments = (f"{what}: {sentence_text}" if sentence_text else what)[:10240]
    sc.DerivationDescription = (
        f"{what}: source image with the model's attention map and boxes burned in "
        f"(report {report_id}). Not for diagnosis.")[:1024]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    reference.PurposeOfReferenceCodeSequence = [SOURCE_FOR_PROCESSING]
    sc.SourceImageSequence = [reference]
    return sc


# --- writing ---------------------------------------------------------------------------


def to_bytes(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file in Explicit VR Little Endian (PS3.10 7.1, PS3.5 A.2).

    Native (uncompressed) little endian datasets are re-encoded without changing ``ds``;
    compressed ones are refused: turning them into native pixel data is not a re-encoding.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = None if meta is None else meta.get("TransferSyntaxUID")
    if syntax not in (None, ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        raise ValueError(f"cannot write transfer syntax {syntax} as Explicit VR Little Endian")
    out = Dataset(ds)  # a new top level: its elements are shared, and none is changed
    out.preamble = b"\x00" * 128
    out.file_meta = FileMetaDataset(copy.deepcopy(meta) if meta is not None else Dataset())
    out.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    out.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, out, enforce_file_format=True)
    return buffer.getvalue()


# --- helpers ---------------------------------------------------------------------------


def _check_source(source: Dataset) -> None:
    missing = [k for k in ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID", "Rows",
                           "Columns", "Modality") if k not in source]
    if missing:
        raise ValueError(f"source header lacks {', '.join(missing)}")


def _uid(*parts: str) -> str:
    """``2.25.<name-based UUID>`` (PS3.5 B.2): same names, same UID; at most 44 characters."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, '|'.join(parts)).int}"


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def _slug(label: str) -> str:
    """``Pleural Effusion`` -> ``pleural-effusion``: the local code value of a label."""
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")

