"""Dataset loaders read fixture folders laid out exactly like the real datasets."""

from __future__ import annotations

import gzip
import re
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from radreport.data.datasets import (
    ReportRecord,
    clean_report_text,
    detect_dataset,
    extract_sections,
    is_frontal,
    open_dataset,
    patient_split,
)
from radreport.data.datasets.base import normalize_view, parse_label
from radreport.data.datasets.chexpert import CheXpert
from radreport.data.datasets.iu_xray import IuXray
from radreport.data.datasets.mimic import MimicCxrJpg
from radreport.data.datasets.phantoms import Phantoms
from radreport.data.labels import CHEXPERT_LABELS

FIXTURES = Path(__file__).parents[2] / "fixtures" / "datasets"
MIMIC = FIXTURES / "mimic-cxr-jpg"
IU = FIXTURES / "iu-xray"
CHEXPERT = FIXTURES / "chexpert"
PHANTOMS = FIXTURES / "phantoms"
KINDS = {"mimic-cxr-jpg": MIMIC, "iu-xray": IU, "chexpert": CHEXPERT, "phantoms": PHANTOMS}
# Punctuation a deleted placeholder leaves behind when cleaning is careless.
BROKEN_PUNCTUATION = re.compile(r"\s[,.;:]|[,;:]\s*[,.;:]|\.\s*\.|\(\s*\)")


def by_study(records: list[ReportRecord]) -> dict[str, ReportRecord]:
    return {r.study_id: r for r in records}


def mimic_report(subject: str, study: str) -> str:
    path = MIMIC / "mimic-cxr-reports" / "files" / f"p{subject[:2]}" / f"p{subject}"
    return (path / f"s{study}.txt").read_text()


# --- text helpers --------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "clean"), [
    ("Heart size is XXXX. No pneumothorax.", "Heart size is. No pneumothorax."),
    ("Lungs are clear bilaterally, XXXX, and without consolidation.",
     "Lungs are clear bilaterally, and without consolidation."),
    ("___ year old woman with cough", "year old woman with cough"),
    ("History: ___-year-old man after lobectomy.", "History: year-old man after lobectomy."),
    ("Normal chest x-XXXX.", "Normal chest x-ray."),
    ("Calcified granuloma in the right upper lobe (XXXX).",
     "Calcified granuloma in the right upper lobe."),
    ("Discussed with Dr. ___ by Dr. ___.", "Discussed with Dr. by Dr."),
    ("Comparison: XXXX, XXXX.", "Comparison."),
    ("XXXX are intact.", "are intact."),
    ("  Two\n  lines,\tone   space  ", "Two lines, one space"),
    ("A 1.2 cm nodule; called at 10:15 AM. XR chest, ANTEROPOSTERIOR.",
     "A 1.2 cm nodule; called at 10:15 AM. XR chest, ANTEROPOSTERIOR."),
])
def test_clean_report_text(raw: str, clean: str) -> None:
    assert clean_report_text(raw) == clean


# MIMIC's layout, kept verbatim: a centred title, one-space indents, " " on blank lines
# and a trailing space after section headings.
MIMIC_TYPICAL = "\n".join([
    "                                 FINAL REPORT",
    " EXAMINATION:  CHEST (PA AND LAT)",
    " ",
    " INDICATION:  History: ___F with fever",
    " ",
    " TECHNIQUE:  Chest PA and lateral",
    " ",
    " COMPARISON:  ___",
    " ",
    " FINDINGS: ",
    " ",
    " Lungs are clear.  No pleural effusion.  Heart size is",
    " normal.",
    " ",
    " IMPRESSION: ",
    " ",
    " No acute cardiopulmonary process.",
    " ",
    " NOTIFICATION:  Discussed with Dr. ___ at 3:10 PM.",
    "",
])


@pytest.mark.parametrize(("report", "findings", "impression"), [
    (MIMIC_TYPICAL, "Lungs are clear. No pleural effusion. Heart size is normal.",
     "No acute cardiopulmonary process."),
    ("INDICATION: Cough.\n\nIMPRESSION: No pneumonia.\n\nRECOMMENDATION(S): None.",
     "", "No pneumonia."),
    ("Findings: Lungs clear.\nImpression: Normal chest.\nComparison: None.",
     "Lungs clear.", "Normal chest."),
    ("HISTORY: Lobectomy.\n\nFINDINGS AND IMPRESSION:  Post-operative change.\n No effusion.",
     "", "Post-operative change. No effusion."),
    ("FINDINGS: No focal consolidation.\n\nCONCLUSION: Normal.", "No focal consolidation.",
     "Normal."),
    ("FINDINGS:\n\nIMPRESSION: First read.\n\nFINDINGS: Lungs clear.\n\nIMPRESSION: Final.",
     "Lungs clear.", "Final."),
    ("IMPRESSION: Normal.\n\nPROVISIONAL FINDINGS IMPRESSION (PFI): wet read text", "",
     "Normal."),
    ("COMPARISON:  ___.\n \n The effusion is smaller.  No pneumothorax.",
     "The effusion is smaller. No pneumothorax.", ""),
    ("                FINAL REPORT\n Chest, two views.\n \n Lungs are clear.",
     "Chest, two views. Lungs are clear.", ""),
    ("INDICATION: Dyspnea.\n\nCOMPARISON: None.", "", ""),
])
def test_extract_sections(report: str, findings: str, impression: str) -> None:
    assert extract_sections(report) == (findings, impression)


def test_extract_sections_stops_at_recommendation_and_notification() -> None:
    findings, impression = extract_sections(mimic_report("10000202", "50000021"))
    assert findings.startswith("Heart size is moderately enlarged.")
    assert findings.endswith("No pneumothorax.")
    assert impression.startswith("1. Cardiomegaly with mild pulmonary vascular congestion")
    assert impression.endswith("Chest CT is recommended for further evaluation.")
    assert "discussed" not in impression and "RECOMMENDATION" not in impression


def test_extract_sections_skips_the_wet_read() -> None:
    findings, impression = extract_sections(mimic_report("10000101", "50000012"))
    assert findings == ""
    assert impression.startswith("Endotracheal tube tip terminates approximately 4.2 cm")
    assert "terminates 4 cm" not in impression  # that sentence is the wet read's


@pytest.mark.parametrize(("raw", "view"), [
    ("PA", "PA"), ("ap", "AP"), ("postero-anterior", "PA"), ("antero-posterior", "AP"),
    ("Frontal", "FRONTAL"), ("Lateral", "LATERAL"), ("LL", "LL"), ("left lateral", "LL"),
    ("AP AXIAL", None), ("", None), (None, None),
])
def test_normalize_view(raw: str | None, view: str | None) -> None:
    assert normalize_view(raw) == view


def test_is_frontal() -> None:
    assert all(is_frontal(v) for v in ("PA", "AP", "FRONTAL"))
    assert not any(is_frontal(v) for v in ("LATERAL", "LL", None))


@pytest.mark.parametrize(("raw", "value"), [
    ("1.0", 1), ("0.0", 0), ("-1.0", -1), ("1", 1), ("", None), ("  ", None), (None, None),
    ("nan", None), (1, 1),
])
def test_parse_label(raw: str | None, value: int | None) -> None:
    assert parse_label(raw) == value


@pytest.mark.parametrize("bad", ["2.0", "0.5", "yes"])
def test_parse_label_rejects_other_values(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_label(bad)


# --- patient_split -------------------------------------------------------------------------

def test_patient_split_is_deterministic_and_follows_fractions() -> None:
    ids = [f"p{i:08d}" for i in range(20_000)]
    splits = [patient_split(p) for p in ids]
    assert splits == [patient_split(p) for p in ids]
    share = {name: splits.count(name) / len(ids) for name in ("train", "validate", "test")}
    assert share["train"] == pytest.approx(0.9, abs=0.01)
    assert share["validate"] == pytest.approx(0.05, abs=0.006)
    assert share["test"] == pytest.approx(0.05, abs=0.006)


def test_patient_split_salt_and_empty_fractions() -> None:
    ids = [str(i) for i in range(2_000)]
    assert {patient_split(p, (0.95, 0.0, 0.05)) for p in ids} == {"train", "test"}
    assert {patient_split(p, (0.0, 0.0, 1.0)) for p in ids} == {"test"}
    moved = sum(patient_split(p, salt="a") != patient_split(p, salt="b") for p in ids)
    assert moved > 100


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.9, 0.2, 0.0), (1.1, -0.1, 0.0)])
def test_patient_split_rejects_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        patient_split("p1", fractions)


# --- properties every loader keeps ---------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_detect_dataset(kind: str) -> None:
    assert detect_dataset(KINDS[kind]) == kind


def test_detect_dataset_inside_the_chexpert_folder() -> None:
    assert detect_dataset(CHEXPERT / "CheXpert-v1.0-small") == "chexpert"


def test_unknown_folders_and_kinds_are_refused(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("a,b\n1,2\n")  # a train.csv that is not CheXpert's
    with pytest.raises(ValueError, match="no known dataset"):
        detect_dataset(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset kind"):
        open_dataset("padchest", MIMIC)
    with pytest.raises(FileNotFoundError):
        open_dataset("iu-xray", MIMIC)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("frontal_only", [True, False])
def test_common_record_properties(kind: str, frontal_only: bool) -> None:
    records = list(open_dataset("auto", KINDS[kind]).records(frontal_only=frontal_only))
    assert records
    splits_of: dict[str, set[str]] = defaultdict(set)
    for rec in records:
        assert rec.dataset == kind
        assert rec.split in ("train", "validate", "test")
        splits_of[rec.patient_id].add(rec.split)
        assert rec.image_path is None or rec.image_path.is_file()
        assert set(rec.labels) <= set(CHEXPERT_LABELS)
        assert set(rec.labels.values()) <= {-1, 0, 1}
        for text in (rec.findings, rec.impression):
            assert "XXXX" not in text and "__" not in text
            assert not BROKEN_PUNCTUATION.search(text), text
            assert text == text.strip() and "  " not in text
        if frontal_only:
            assert is_frontal(rec.view)
    assert all(len(s) == 1 for s in splits_of.values()), "a patient is in two splits"


@pytest.mark.parametrize("kind", KINDS)
def test_split_filter(kind: str) -> None:
    dataset = open_dataset(kind, KINDS[kind])
    everything = list(dataset.records(frontal_only=False))
    for split in ("train", "validate", "test"):
        chosen = list(dataset.records(split=split, frontal_only=False))
        assert chosen == [r for r in everything if r.split == split]
    with pytest.raises(ValueError, match="unknown split"):
        next(dataset.records(split="holdout"))


# --- MIMIC-CXR-JPG -------------------------------------------------------------------------

def test_mimic_one_frontal_record_per_study() -> None:
    records = list(MimicCxrJpg(MIMIC).records())
    assert [r.study_id for r in records] == [
        "s50000011", "s50000012", "s50000021", "s50000031", "s50000042", "s50000051"]
    studies = by_study(records)
    assert studies["s50000021"].view == "PA"  # its AP image comes first and is passed over
    assert studies["s50000012"].view == "AP"
    assert studies["s50000031"].view == "PA"  # blank ViewPosition, coded view read instead
    rec = studies["s50000011"]
    assert rec.patient_id == "p10000101"
    assert rec.image_path == (MIMIC / "files" / "p10" / "p10000101" / "s50000011"
                              / f"{rec.extra['dicom_id']}.jpg")
    assert rec.extra["StudyDate"] == "21560314"
    assert rec.sex is None and rec.age is None


def test_mimic_laterals_and_per_image() -> None:
    studies = by_study(list(MimicCxrJpg(MIMIC).records(frontal_only=False)))
    assert len(studies) == 7 and studies["s50000041"].view == "LATERAL"
    per_image = list(MimicCxrJpg(MIMIC, per_image=True).records())
    assert len(per_image) == 7
    assert sorted(r.view or "" for r in per_image if r.study_id == "s50000021") == ["AP", "PA"]
    everything = list(MimicCxrJpg(MIMIC, per_image=True).records(frontal_only=False))
    assert len(everything) == 12
    assert len({r.extra["dicom_id"] for r in everything}) == 12


def test_mimic_official_split() -> None:
    split_of = {r.patient_id: r.split for r in MimicCxrJpg(MIMIC).records(frontal_only=False)}
    assert split_of == {"p10000101": "train", "p10000202": "train", "p11000303": "validate",
                        "p12000404": "test", "p19000505": "test"}
    assert [r.study_id for r in MimicCxrJpg(MIMIC).records(split="valid")] == ["s50000031"]


def test_mimic_report_sections() -> None:
    studies = by_study(list(MimicCxrJpg(MIMIC).records(frontal_only=False)))
    typical = studies["s50000011"]
    assert typical.findings == (
        "The lungs are well expanded. There is a patchy opacity in the right lower lobe which "
        "may reflect early pneumonia. No pleural effusion or pneumothorax. The "
        "cardiomediastinal silhouette is within normal limits. Mild degenerative changes of "
        "the thoracic spine.")
    assert typical.impression == (
        "Right lower lobe opacity, concerning for pneumonia in the appropriate clinical "
        "setting. Follow-up radiographs in weeks after treatment are recommended.")
    assert studies["s50000012"].findings == ""
    assert studies["s50000012"].impression.endswith("No pneumothorax.")
    assert studies["s50000031"].findings == ""  # FINDINGS AND IMPRESSION is the impression
    assert studies["s50000031"].impression.startswith("Postoperative changes of right upper")
    assert studies["s50000041"].findings.startswith("The left pleural effusion has decreased")
    assert studies["s50000041"].impression == ""
    assert studies["s50000051"].findings.startswith("PA and lateral views of the chest. There")
    assert (studies["s50000042"].findings, studies["s50000042"].impression) == ("", "")


def test_mimic_labels() -> None:
    studies = by_study(list(MimicCxrJpg(MIMIC).records()))
    assert studies["s50000011"].labels == {
        "Lung Opacity": 1, "Pneumonia": -1, "Pleural Effusion": 0, "Pneumothorax": 0}
    assert studies["s50000031"].labels["Support Devices"] == -1
    assert studies["s50000051"].labels == {"No Finding": 1}
    assert studies["s50000042"].labels == {}  # no row in the CheXpert table


def _mimic_without_reports(tmp_path: Path, gunzip: bool) -> Path:
    root = tmp_path / "mimic-cxr-jpg"
    shutil.copytree(MIMIC, root, ignore=shutil.ignore_patterns("mimic-cxr-reports"))
    if gunzip:
        for gz in root.glob("*.csv.gz"):
            gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
            gz.unlink()
    return root


@pytest.mark.parametrize("reports_root", [
    MIMIC / "mimic-cxr-reports", MIMIC / "mimic-cxr-reports" / "files"])
def test_mimic_plain_csv_and_separate_reports(tmp_path: Path, reports_root: Path) -> None:
    root = _mimic_without_reports(tmp_path, gunzip=True)
    assert not list(root.glob("*.gz")) and detect_dataset(root) == "mimic-cxr-jpg"
    moved = list(open_dataset("mimic-cxr-jpg", root, reports_root=reports_root).records())
    original = list(MimicCxrJpg(MIMIC).records())
    assert [(r.study_id, r.findings, r.impression, r.labels, r.split) for r in moved] == [
        (r.study_id, r.findings, r.impression, r.labels, r.split) for r in original]
    assert all(r.image_path is not None and r.image_path.is_relative_to(root) for r in moved)


def test_mimic_reports_next_to_the_images(tmp_path: Path) -> None:
    root = _mimic_without_reports(tmp_path, gunzip=False)
    shutil.copytree(MIMIC / "mimic-cxr-reports" / "files", root / "files", dirs_exist_ok=True)
    rec = by_study(list(MimicCxrJpg(root).records()))["s50000011"]
    assert rec.impression.startswith("Right lower lobe opacity")


def test_mimic_without_reports_keeps_labels(tmp_path: Path) -> None:
    root = _mimic_without_reports(tmp_path, gunzip=False)
    records = list(MimicCxrJpg(root).records())
    assert len(records) == 6
    assert all(r.findings == "" and r.impression == "" for r in records)
    assert by_study(records)["s50000051"].labels == {"No Finding": 1}
    with pytest.raises(FileNotFoundError):
        MimicCxrJpg(root, reports_root=tmp_path / "missing")


# --- IU X-ray ------------------------------------------------------------------------------

def test_iu_frontal_records() -> None:
    records = list(IuXray(IU).records())
    assert [r.study_id for r in records] == ["1", "2", "4", "5"]
    assert all(r.view == "FRONTAL" and r.patient_id == r.study_id for r in records)
    studies = by_study(records)
    images = IU / "images" / "images_normalized"
    assert studies["1"].image_path == images / "1_IM-0001-4001.dcm.png"
    assert studies["4"].image_path == images / "4_IM-2050-1001.dcm.png"  # first of two


def test_iu_all_views_and_per_image() -> None:
    studies = by_study(list(IuXray(IU).records(frontal_only=False)))
    assert list(studies) == ["1", "2", "3", "4", "5", "6"]
    assert studies["3"].view == "LATERAL"
    assert studies["6"].image_path is None and studies["6"].view is None  # no projection
    assert len(list(IuXray(IU, per_image=True).records())) == 5
    assert len(list(IuXray(IU, per_image=True).records(frontal_only=False))) == 10


def test_iu_texts_are_cleaned() -> None:
    studies = by_study(list(IuXray(IU).records(frontal_only=False)))
    assert studies["1"].findings == (
        "The cardiomediastinal silhouette is within normal limits for size and contour. "
        "Heart size is. The lungs are clear. No pneumothorax or pleural effusion. are intact.")
    assert studies["1"].impression == "Normal chest x-ray."
    assert studies["2"].findings == ""
    assert studies["2"].impression == "1. Stable mild cardiomegaly. 2. No acute abnormality."
    assert studies["3"].findings == ("Lungs are clear bilaterally, and without consolidation. "
                                     "No effusion.")
    assert "right upper lobe. No focal" in studies["4"].findings


def test_iu_labels_extra_and_split() -> None:
    records = list(IuXray(IU).records(frontal_only=False))
    assert all(r.labels == {} for r in records)
    studies = by_study(records)
    assert studies["5"].extra["MeSH"].startswith("Opacity/lung/base/left/mild")
    assert studies["5"].extra["Problems"] == "Opacity;Pulmonary Atelectasis"
    assert studies["1"].extra["indication"] == "year-old male with chest pain."
    assert all(r.split == patient_split(r.patient_id) for r in records)
    assert {r.split for r in IuXray(IU, fractions=(0, 0, 1)).records()} == {"test"}
    salted = IuXray(IU, fractions=(0.5, 0.0, 0.5), salt="other")
    assert all(r.split == patient_split(r.patient_id, (0.5, 0.0, 0.5), "other")
               for r in salted.records())


# --- CheXpert ------------------------------------------------------------------------------

def test_chexpert_root_may_be_either_folder() -> None:
    outer = list(CheXpert(CHEXPERT).records(frontal_only=False))
    inner = list(CheXpert(CHEXPERT / "CheXpert-v1.0-small").records(frontal_only=False))
    assert outer == inner
    rec = outer[0]
    assert rec.image_path == (CHEXPERT / "CheXpert-v1.0-small" / "train" / "patient00001"
                              / "study1" / "view1_frontal.jpg")


def test_chexpert_studies_and_views() -> None:
    studies = by_study(list(CheXpert(CHEXPERT).records()))
    assert list(studies) == [
        "patient00001_study1", "patient00002_study2", "patient00002_study1",
        "patient00003_study1", "patient00004_study1", "patient64541_study1",
        "patient64542_study1"]
    assert studies["patient00004_study1"].view == "PA"
    assert studies["patient00002_study1"].image_path is not None
    assert studies["patient00002_study1"].image_path.name == "view1_frontal.jpg"
    all_views = by_study(list(CheXpert(CHEXPERT).records(frontal_only=False)))
    assert len(all_views) == 8 and all_views["patient00005_study1"].view == "LATERAL"
    assert len(list(CheXpert(CHEXPERT, per_image=True).records(frontal_only=False))) == 11
    assert len(list(CheXpert(CHEXPERT, per_image=True).records())) == 7


def test_chexpert_labels_and_demographics() -> None:
    studies = by_study(list(CheXpert(CHEXPERT).records()))
    uncertain = studies["patient00002_study2"]
    assert uncertain.labels == {"Cardiomegaly": -1, "Lung Opacity": 1, "Edema": -1,
                                "Consolidation": -1, "Atelectasis": -1,
                                "Pleural Effusion": -1, "Fracture": 1}
    assert set(studies["patient64541_study1"].labels) == set(CHEXPERT_LABELS)
    assert studies["patient64541_study1"].labels["Cardiomegaly"] == 1
    assert (uncertain.sex, uncertain.age) == ("F", 87)
    assert (studies["patient64541_study1"].sex, studies["patient64541_study1"].age) == ("M", 73)
    assert studies["patient00003_study1"].sex is None  # "Unknown" in the CSV
    assert all(r.findings == "" and r.impression == "" for r in studies.values())


def test_chexpert_splits() -> None:
    records = list(CheXpert(CHEXPERT).records(frontal_only=False))
    for rec in records:
        if rec.patient_id.startswith("patient645"):
            assert rec.split == "validate"
        else:
            assert rec.split == patient_split(rec.patient_id, (0.95, 0.0, 0.05))
    tested = list(CheXpert(CHEXPERT, train_fractions=(0, 0, 1)).records())
    assert {r.split for r in tested} == {"test", "validate"}
    assert [r.patient_id for r in CheXpert(CHEXPERT).records(split="validate")] == [
        "patient64541", "patient64542"]


# --- phantoms ------------------------------------------------------------------------------

def test_phantoms_records_match_the_manifest() -> None:
    import json

    manifest = [json.loads(x) for x in (PHANTOMS / "manifest.jsonl").read_text().splitlines()]
    records = list(Phantoms(PHANTOMS).records())
    assert [r.study_id for r in records] == [m["study_id"] for m in manifest]
    for rec, entry in zip(records, manifest, strict=True):
        assert rec.patient_id == entry["patient"]["patient_id"]
        assert (rec.sex, rec.age) == (entry["patient"]["sex"], entry["patient"]["age_years"])
        assert rec.labels == entry["labels"] and len(rec.labels) == 14
        assert rec.findings == entry["findings_text"]
        assert rec.impression == entry["impression_text"]
        assert rec.image_path == PHANTOMS / entry["image"]
        assert rec.view == entry["view"] and rec.extra == {}
    assert [r.split for r in records] == [
        "train", "train", patient_split("PHANTOM-0000003"), "test"]  # the third has none


def test_phantoms_manifest_variants(tmp_path: Path) -> None:
    lines = [
        '{"study_id": "S1", "patient": {"patient_id": "P1", "age_years": 50, "sex": "M"},'
        ' "split": "val", "view": "PA", "findings_text": "Lungs clear.",'
        ' "impression_text": "Normal.", "labels": {"No Finding": 1}, "unknown_key": [1, 2]}',
        "",
        '{"study_id": "S2", "patient": {"patient_id": "P2", "age_years": 60, "sex": "F"},'
        ' "view": "LATERAL", "findings_text": "", "impression_text": "", "labels": {}}',
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    assert detect_dataset(tmp_path) == "phantoms"
    records = list(open_dataset("phantoms", tmp_path).records(frontal_only=False))
    assert [r.split for r in records] == ["validate", patient_split("P2")]
    assert records[0].image_path == tmp_path / "images" / "S1.png"  # no "image" key
    assert records[0].labels == {"No Finding": 1}
    assert [r.study_id for r in open_dataset("phantoms", tmp_path).records()] == ["S1"]
