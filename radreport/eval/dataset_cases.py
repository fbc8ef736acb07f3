"""Evaluation cases from a real dataset (MIMIC-CXR-JPG, IU X-ray, CheXpert) for the gate.

Images are decoded as serving decodes them (``services.preprocess.imaging.load_image``);
one the service would refuse is skipped and counted, never fatal. Reference labels follow
training's policy (``study_labels``): the dataset's own CheXpert labels (uncertain counts as
positive, as in every clinical row), else our labeler's reading of the reference report
(IU X-ray has no labels, as issue 18 decided; some MIMIC-CXR studies have no label row).
No dataset here has organ masks, so anatomical grounding and laterality rows come out
undefined ("not measurable"), and so do grounding IoU and pointing, except on MIMIC-CXR-JPG
with MS-CXR's boxes (``ms_cxr``): each phrase of an image with boxes is a reference sentence
stating its CheXpert label, its region the boxes in the model's square (the served
letterbox), and generated sentences are paired with it as with phantom ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from radreport.data.datasets.base import ReportRecord, open_dataset, report_text, study_labels
from radreport.data.datasets.ms_cxr import GroundedImage, read_ms_cxr
from radreport.data.labels import with_parents
from radreport.eval.evaluate import ReferenceSentence, TestCase
from radreport.model.prompt import ClinicalContext
from radreport.model.regions import box_mask, phrase_spans, reference_spans, report_words


@dataclass(frozen=True)
class DatasetCases:
    cases: list[TestCase]
    skipped: int  # images that could not be read or that serving would refuse
    note: str


def box_references(image: GroundedImage, text: str, shape: tuple[int, int],
                   size: int) -> list[ReferenceSentence]:
    """MS-CXR's phrases as reference sentences: the section of the report sentence holding
    the phrase (findings if none does), its label with parents, its boxes in the model's
    ``size`` square for an image of ``shape`` (pixels at least half covered)."""
    words, spans = report_words(text), reference_spans(text)
    references = []
    for phrase in image.phrases:
        if phrase.label is None:
            continue
        found = phrase_spans(words, phrase.text)
        mask = box_mask(phrase.boxes, (image.width, image.height), shape, size) >= 0.5
        if mask.any():
            section = spans[found[0]].section if found else "findings"
            references.append(ReferenceSentence(section, frozenset(with_parents({phrase.label})),
                                                mask, phrase.text))
    return references


def _records(kind: str, root: Path, split: str) -> Iterator[ReportRecord]:
    return open_dataset(kind, root).records(split, frontal_only=True)


def dataset_cases(kind: str, root: Path, split: str = "test", limit: int | None = None,
                  ms_cxr: Path | None = None, mask_size: int = 256) -> DatasetCases:
    """The first ``limit`` readable frontal studies of ``split``; with ``ms_cxr`` (MIMIC-CXR-JPG
    only) the boxes of their images, as masks of the model's ``mask_size`` square."""
    from services.preprocess.imaging import InputRefused, load_image

    if ms_cxr is not None and kind != "mimic-cxr-jpg":
        raise ValueError(f"MS-CXR's boxes are on MIMIC-CXR-JPG images, not {kind}")
    grounded = read_ms_cxr(ms_cxr) if ms_cxr is not None else {}
    cases: list[TestCase] = []
    skipped = boxed = labelled = 0
    for record in _records(kind, root, split):
        if limit is not None and len(cases) >= limit:
            break
        if record.image_path is None:
            skipped += 1
            continue
        try:
            pixels = load_image(record.image_path).pixels
        except (OSError, InputRefused):
            skipped += 1
            continue
        text = report_text(record)  # the phantoms' layout: NLG rows compare like with like
        image = grounded.get(record.extra.get("dicom_id", ""))
        positives = ([] if image is None else
                     box_references(image, text, pixels.shape[:2], mask_size))
        boxed += bool(positives)
        labels, from_labeler = study_labels(record)
        labelled += from_labeler
        cases.append(TestCase(record.study_id, pixels, text, labels, positives,
                              context=ClinicalContext(None, record.age, record.sex)))
    source = (f"the dataset's CheXpert labels, our labeler's reading of the report for the "
              f"{labelled} studies without any")
    regions = (f"MS-CXR boxes on {boxed} of them score grounding IoU and pointing; no organ "
               "masks, so laterality rows are not measurable" if ms_cxr is not None else
               "no region masks, so grounding and laterality rows are not measurable")
    note = f"{kind}: {len(cases)} studies, {skipped} skipped as unreadable; {source}; {regions}"
    return DatasetCases(cases, skipped, note)
