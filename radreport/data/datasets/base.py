"""One record type and one interface for every chest X-ray dataset we read.

Loaders turn each dataset's own layout into :class:`ReportRecord` objects so training and
evaluation code never looks at a CSV column name. The text helpers here are shared because
the same problems (de-identification placeholders, free-text section headings) recur
across MIMIC-CXR and IU X-ray.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, TextIO

from radreport.data.labels import CHEXPERT_LABELS, POSITIVE, UNCERTAIN, LabelVector

SPLITS: Final[tuple[str, ...]] = ("train", "validate", "test")
FRONTAL_VIEWS: Final[frozenset[str]] = frozenset({"PA", "AP", "FRONTAL"})
# Which image stands for a study when only one is wanted: PA is the diagnostic standard,
# AP (portable, supine) is noisier; laterals only when nothing frontal exists.
VIEW_PREFERENCE: Final[tuple[str, ...]] = ("PA", "AP", "FRONTAL", "LATERAL", "LL")

_VIEW_ALIASES: Final[dict[str, str]] = {
    "PA": "PA",
    "POSTERO-ANTERIOR": "PA",
    "AP": "AP",
    "ANTERO-POSTERIOR": "AP",
    "FRONTAL": "FRONTAL",
    "LATERAL": "LATERAL",
    "LAT": "LATERAL",
    "XTABLE LATERAL": "LATERAL",
    "LL": "LL",
    "LEFT LATERAL": "LL",
}
_SPLIT_ALIASES: Final[dict[str, str]] = {
    "train": "train", "training": "train",
    "validate": "validate", "valid": "validate", "val": "validate", "validation": "validate",
    "test": "test", "testing": "test",
}


@dataclass(frozen=True)
class ReportRecord:
    """One study (or one image of it) with its report sections, labels and split.

    ``view`` is normalised to "PA", "AP", "FRONTAL" (frontal, PA/AP unknown, as in IU X-ray),
    "LATERAL", "LL" or None. ``labels`` holds only the observations the source states (1, 0
    or -1); a missing key means "not mentioned". ``extra`` keeps source-specific columns
    (MeSH terms, DICOM ids) without widening the common record.
    """

    dataset: str
    study_id: str
    patient_id: str
    image_path: Path | None
    view: str | None
    findings: str
    impression: str
    labels: LabelVector
    split: str
    sex: str | None = None
    age: int | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageRef:
    """One image of a study, before a loader decides which images become records."""

    path: Path
    view: str | None
    image_id: str


def report_text(record: ReportRecord) -> str:
    """A record's report in the phantoms' layout (``FINDINGS: ...`` then ``IMPRESSION: ...``,
    empty sections left out): what models are trained to write and scored against."""
    parts = [f"{name}: {body}" for name, body in (("FINDINGS", record.findings),
                                                   ("IMPRESSION", record.impression)) if body]
    return "\n\n".join(parts)


def study_labels(record: ReportRecord) -> tuple[list[int], bool]:
    """14 labels as 0/1, one policy for training and evaluation: the record's own CheXpert
    labels (uncertain counts as positive), else our labeler's reading of its report (the
    bool says so): IU X-ray has no labels, and some MIMIC-CXR studies have no label row."""
    if record.labels:
        return [int(record.labels.get(name) in (POSITIVE, UNCERTAIN))
                for name in CHEXPERT_LABELS], False
    from radreport.eval.labeler import report_vector  # the labeler reads the data package

    vector = report_vector(report_text(record))  # uncertain counts as positive there too
    return [int(vector[name]) for name in CHEXPERT_LABELS], True


def normalize_view(raw: str | None) -> str | None:
    """Map the many spellings of a projection (DICOM ViewPosition, CSV columns) to ours."""
    if raw is None:
        return None
    return _VIEW_ALIASES.get(" ".join(raw.split()).upper())


def normalize_split(raw: str) -> str:
    """Accept the split spellings datasets use and return train / validate / test."""
    split = _SPLIT_ALIASES.get(raw.strip().lower())
    if split is None:
        raise ValueError(f"unknown split {raw!r}; expected one of {SPLITS}")
    return split


def is_frontal(view: str | None) -> bool:
    """True for PA, AP and frontal-of-unknown-direction views; models are trained on these."""
    return view in FRONTAL_VIEWS


def view_rank(view: str | None) -> int:
    """Position in :data:`VIEW_PREFERENCE`; unknown views come last."""
    return VIEW_PREFERENCE.index(view) if view in VIEW_PREFERENCE else len(VIEW_PREFERENCE)


def select_images(images: Iterable[ImageRef], *, frontal_only: bool,
                  per_image: bool) -> list[ImageRef]:
    """The images of one study that become records: all of them, or the preferred one."""
    kept = [img for img in images if is_frontal(img.view) or not frontal_only]
    if per_image:
        return kept
    best = min(kept, key=lambda img: (view_rank(img.view), img.image_id), default=None)
    return [] if best is None else [best]


# --- report text ---------------------------------------------------------------------------

# IU X-ray redacts "ray" in "x-ray" as if it were a name; restoring it is unambiguous.
_XRAY = re.compile(r"\b([xX])-XXXX\b")
# XXXX (IU) and ___ (MIMIC), with a hyphen glued to them ("___-year-old") going too.
_PLACEHOLDER = re.compile(r"-?(?<![A-Za-z])X{3,}(?![A-Za-z])-?|_{2,}-?")
_EMPTY_BRACKETS = re.compile(r"\(\s*[,;:]?\s*\)|\[\s*\]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)])")
_REPEATED_PUNCT = re.compile(r"([,;:])(?:\s*[,;:])+")
_COMMA_BEFORE_STOP = re.compile(r"[,;:]\s*([.!?])")
_REPEATED_STOP = re.compile(r"\.(?:\s*\.)+")
_LEADING_PUNCT = re.compile(r"^[\s,;:.]+|(?<=[.!?])\s*[,;:]+")
_OPEN_PAREN_SPACE = re.compile(r"\(\s+")


def clean_report_text(text: str) -> str:
    """Remove de-identification placeholders and the broken punctuation they leave behind.

    Models should never learn to emit "XXXX" or "___", and " ," or ". ." left by a deleted
    name or date would teach them bad punctuation just the same.
    """
    text = _XRAY.sub(r"\1-ray", text)
    text = _PLACEHOLDER.sub(" ", text)
    text = " ".join(text.split())
    text = _EMPTY_BRACKETS.sub(" ", text)
    text = _OPEN_PAREN_SPACE.sub("(", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    text = _COMMA_BEFORE_STOP.sub(r"\1", text)
    text = _REPEATED_STOP.sub(".", text)
    text = _LEADING_PUNCT.sub("", text)
    return " ".join(text.split())


_FINDINGS_NAMES: Final[frozenset[str]] = frozenset({"findings", "finding"})
# As in the MIMIC-CXR authors' section parser: combined sections and conclusions are the
# radiologist's summary, so they count as the impression.
_IMPRESSION_NAMES: Final[frozenset[str]] = frozenset({
    "impression", "impressions", "conclusion", "conclusions",
    "findings and impression", "impression and findings",
    "findings/impression", "findings / impression",
})
_OTHER_NAMES: Final[frozenset[str]] = frozenset({
    "comparison", "comparisons", "indication", "history", "clinical history", "technique",
    "examination", "exam", "reason for exam", "reason for examination", "clinical information",
    "recommendation", "recommendations", "recommendation(s)", "notification", "wet read",
    "addendum", "procedure",
})
_KNOWN_NAMES: Final[frozenset[str]] = _FINDINGS_NAMES | _IMPRESSION_NAMES | _OTHER_NAMES
# A heading starts a line and ends in a colon followed by space: "IMPRESSION:  No ...".
_HEADING = re.compile(r"^[ \t]*([A-Za-z][A-Za-z ()/,&-]{0,48}?)[ \t]*:(?=\s|$)", re.MULTILINE)
_TITLE = re.compile(r"^\s*FINAL REPORT\s*$", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class _Section:
    name: str  # lower-cased, whitespace collapsed
    body: str


def _is_heading(name: str) -> bool:
    """ALL-CAPS words followed by a colon, or a known heading in any case."""
    return name == name.upper() or _section_key(name) in _KNOWN_NAMES


def _section_key(name: str) -> str:
    return " ".join(name.lower().split())


def split_sections(report_text: str) -> tuple[str, list[_Section]]:
    """The text before the first heading, and each heading with the text up to the next."""
    text = _TITLE.sub("", report_text.replace("\r\n", "\n"))
    heads = [m for m in _HEADING.finditer(text) if _is_heading(m.group(1))]
    if not heads:
        return text, []
    preamble = text[: heads[0].start()]
    ends = [m.start() for m in heads[1:]] + [len(text)]
    sections = [_Section(_section_key(m.group(1)), text[m.end(): end])
                for m, end in zip(heads, ends, strict=True)]
    return preamble, sections


def _last_nonempty(sections: Sequence[_Section], names: frozenset[str]) -> str:
    """The last non-empty section of a kind: MIMIC repeats headings, the last one is final."""
    bodies = [s.body for s in sections if s.name in names and s.body.strip()]
    return bodies[-1] if bodies else ""


def _unheaded_body(preamble: str, sections: Sequence[_Section]) -> str:
    """Report text written without a FINDINGS/IMPRESSION heading.

    With no headings at all the whole text is the report body. Otherwise the body is what
    follows the first paragraph of the last section (e.g. after "COMPARISON: None."), the
    same fallback as the MIMIC-CXR authors' "last paragraph".
    """
    if not sections:
        return preamble
    paragraphs = _PARAGRAPH_BREAK.split(sections[-1].body.strip(), maxsplit=1)
    return paragraphs[1] if len(paragraphs) == 2 else ""


def extract_sections(report_text: str) -> tuple[str, str]:
    """(findings, impression) of a free-text radiology report, cleaned.

    Headings are recognised at the start of a line; each section runs to the next heading.
    A report with no FINDINGS or IMPRESSION heading yields its unheaded body as findings.
    """
    preamble, sections = split_sections(report_text)
    findings = _last_nonempty(sections, _FINDINGS_NAMES)
    impression = _last_nonempty(sections, _IMPRESSION_NAMES)
    if not findings and not impression:
        findings = _unheaded_body(preamble, sections)
    return clean_report_text(findings), clean_report_text(impression)


# --- splits and labels ---------------------------------------------------------------------

def patient_split(patient_id: str, fractions: Sequence[float] = (0.9, 0.05, 0.05),
                  salt: str = "radreport") -> str:
    """Deterministic train/validate/test assignment from a hash of the patient id.

    Hashing the patient (not the study) keeps every study of a patient in one split, and
    needs no stored split file; change ``salt`` to draw a different split.
    """
    if len(fractions) != len(SPLITS) or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-9:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1: {fractions}")
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        cumulative += fraction
        if u < cumulative:
            return name
    return next(n for n, f in zip(reversed(SPLITS), reversed(fractions), strict=True) if f > 0)


def parse_label(value: str | float | None) -> int | None:
    """A CheXpert cell (1.0 / 0.0 / -1.0 / blank) as 1 / 0 / -1 / None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    number = float(value)
    if number != number:  # NaN written by pandas exports means blank too
        return None
    label = int(number)
    if label not in (-1, 0, 1) or label != number:
        raise ValueError(f"not a CheXpert label value: {value!r}")
    return label


def parse_labels(row: dict[str, Any]) -> LabelVector:
    """The CheXpert labels a row states; blanks (not mentioned) are left out."""
    labels: LabelVector = {}
    for name in CHEXPERT_LABELS:
        value = parse_label(row.get(name))
        if value is not None:
            labels[name] = value
    return labels


# --- files ---------------------------------------------------------------------------------

def open_text(path: Path) -> TextIO:
    """Open a CSV that may be gzip-compressed, as the MIMIC tables are distributed."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_csv(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a (possibly gzipped) CSV as dicts, streamed."""
    with open_text(path) as fh:
        yield from csv.DictReader(fh)


def csv_header(path: Path) -> list[str]:
    """The column names of a CSV, or an empty list when it is empty or unreadable."""
    try:
        with open_text(path) as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return []


# --- the interface -------------------------------------------------------------------------

class ReportDataset(ABC):
    """A dataset on disk, read lazily as :class:`ReportRecord` objects."""

    name: ClassVar[str]

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.looks_like(self.root):
            raise FileNotFoundError(f"{self.root} does not look like a {self.name} folder")

    @classmethod
    @abstractmethod
    def looks_like(cls, root: Path) -> bool:
        """Whether ``root`` holds this dataset's files; used by :func:`detect_dataset`."""

    @abstractmethod
    def _all_records(self, frontal_only: bool) -> Iterator[ReportRecord]:
        """Every record of every split, in the dataset's own order."""

    def records(self, split: str | None = None, frontal_only: bool = True
                ) -> Iterator[ReportRecord]:
        """Records of one split (or all), frontal views only unless asked otherwise."""
        wanted = None if split is None else normalize_split(split)
        for rec in self._all_records(frontal_only):
            if wanted is None or rec.split == wanted:
                yield rec


def _loaders() -> dict[str, type[ReportDataset]]:
    # Imported here: the loader modules import this one.
    from radreport.data.datasets.chexpert import CheXpert
    from radreport.data.datasets.iu_xray import IuXray
    from radreport.data.datasets.mimic import MimicCxrJpg
    from radreport.data.datasets.phantoms import Phantoms

    return {cls.name: cls for cls in (Phantoms, MimicCxrJpg, IuXray, CheXpert)}


DATASET_KINDS: Final[tuple[str, ...]] = ("phantoms", "mimic-cxr-jpg", "iu-xray", "chexpert")


def detect_dataset(root: Path) -> str:
    """The kind of dataset in ``root``, recognised by its characteristic files."""
    for kind, cls in _loaders().items():
        if cls.looks_like(Path(root)):
            return kind
    raise ValueError(f"no known dataset layout in {root}; expected one of {DATASET_KINDS}")


def open_dataset(kind: str, root: Path, **options: Any) -> ReportDataset:
    """The loader for ``kind`` ("auto" to detect it) opened on ``root``.

    ``options`` go to the loader, e.g. ``reports_root`` or ``per_image`` for MIMIC-CXR-JPG.
    """
    loaders = _loaders()
    if kind == "auto":
        kind = detect_dataset(root)
    if kind not in loaders:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {DATASET_KINDS}")
    return loaders[kind](Path(root), **options)
