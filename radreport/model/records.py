"""Training records from real datasets (MIMIC-CXR-JPG, IU X-ray, CheXpert), read from disk.

A real dataset is too large to render into memory or a cache the way phantoms are, so
only the small parts are held (token ids, labels, sex, age and the image's path, in
NumPy arrays that forked DataLoader workers share without copying) and each image is
decoded and resized when a worker asks for it.

What each dataset teaches (issue 18, "Decided here"):

- MIMIC-CXR-JPG: its CheXpert labels (``mimic-cxr-2.0.0-chexpert.csv``) and its
  FINDINGS/IMPRESSION text. A study without a label row gets our labeler's labels.
- CheXpert: its labels only. It has no report text, so its report ids are all PAD: the
  decoder's language-model loss skips it, the label head and the queries learn from it.
- IU X-ray: its report text; it has no labels, so they come from our rule-based labeler
  (``radreport.eval.labeler``) run on that text.

Label policy, the same for all three: positive (1) and uncertain (-1) are positive, what
is negative (0) or not mentioned is negative. Uncertain as positive ("U-Ones") is what
our evaluation counts (``labeler.report_vector``) and keeps the decoder's prompt in step
with reports that raise a finding with a hedge ("possible pneumonia").

Real datasets have no regions, so a record's sentence and query masks are empty: the
grounding and query-attention losses weigh empty masks by zero, they do not see garbage.
The exception is MIMIC-CXR-JPG with MS-CXR's phrase boxes (``data.ms_cxr``): an image with
boxes carries them as regions (``regions.py``), and those losses apply to it alone.
Images that cannot be read are skipped, counted and logged by index, never by path (paths
hold patient ids), and never stop a run (``StreamingDataset``).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from tqdm import tqdm

from radreport.data.datasets import ReportRecord, open_dataset, report_text, study_labels
from radreport.data.datasets.ms_cxr import GroundedImage, read_ms_cxr
from radreport.data.labels import CHEXPERT_LABELS
from radreport.model.cache import (
    MAX_SENTENCES,
    Example,
    ExampleOptions,
    RecordDataset,
    RecordSpec,
    make_record_example,
    spec_for,
)
from radreport.model.config import ModelConfig
from radreport.model.data import DataConfig
from radreport.model.images import UnreadableImage, augment_geometry, letterbox, read_image
from radreport.model.prompt import INDICATION_WORDS
from radreport.model.regions import ImageRegions, image_regions, phrase_masks, region_fields
from radreport.model.tokenizer import ReportTokenizer

log = logging.getLogger(__name__)

REAL_DATASETS: Final[tuple[str, ...]] = ("mimic-cxr-jpg", "iu-xray", "chexpert")
# Where each dataset's labels and text come from; said in the run's log and the README.
SOURCES: Final[dict[str, str]] = {
    "mimic-cxr-jpg": "labels from MIMIC-CXR's CheXpert table (our labeler where a study has "
                     "no row), FINDINGS/IMPRESSION text",
    "chexpert": "CheXpert's labels only: no report text, the decoder's LM loss skips these "
                "studies",
    "iu-xray": "report text; labels from radreport's rule-based labeler "
               "(radreport.eval.labeler) on that text, IU X-ray having none",
}
LABEL_POLICY: Final = "uncertain (-1) counts as positive; negative and not mentioned as negative"
UNKNOWN_SEX, UNKNOWN_AGE = 2, 255  # record codes the prompt reads as "unknown"


def training_labels(record: ReportRecord) -> tuple[np.ndarray, bool]:
    """(14 labels as 0/1, whether our labeler made them): ``study_labels``, the policy the
    release gate scores against too."""
    values, from_labeler = study_labels(record)
    return np.array(values, np.uint8), from_labeler


def split_records(kind: str, root: str | Path, split: str) -> Iterator[ReportRecord]:
    """The frontal-view records of one split that have an image and text or labels."""
    for record in open_dataset(kind, Path(root)).records(split=split, frontal_only=True):
        if record.image_path is not None and (record.labels or report_text(record)):
            yield record


def corpus_texts(kind: str, root: str | Path, limit: int) -> list[str]:
    """Train-split report texts (the first ``limit`` with text) and their indications: the
    tokenizer's corpus. Never the validate or test split."""
    texts: list[str] = []
    for record in split_records(kind, root, "train"):
        text = report_text(record)
        if not text:
            continue
        texts.append(text)
        if record.extra.get("indication"):
            texts.append(record.extra["indication"])
        if len(texts) >= 2 * limit:
            break
    return texts


@dataclass
class RecordArrays:
    """The small part of every record, in arrays forked workers share copy-free."""

    paths: np.ndarray  # (N,) bytes, UTF-8 image paths (never logged)
    ids: np.ndarray  # (N, report_len) int16, [BOS] text [EOS] padded; all PAD: no text
    labels: np.ndarray  # (N, 14) uint8
    sex: np.ndarray  # (N,) uint8: 0 F, 1 M, UNKNOWN_SEX
    age: np.ndarray  # (N,) uint8: years, UNKNOWN_AGE
    indication: np.ndarray  # (N, INDICATION_WORDS) int16, PAD padded
    labeled_by_us: int  # records whose labels our labeler made
    with_text: int  # records with report text
    regions: dict[int, ImageRegions] = field(default_factory=dict)  # MS-CXR, by index


def read_arrays(kind: str, root: str | Path, split: str, tokenizer: ReportTokenizer,
                report_len: int, limit: int = 0,
                grounded: dict[str, GroundedImage] | None = None) -> RecordArrays:
    """One pass over a split's records (the first ``limit`` when positive); ``grounded``:
    MS-CXR's images by dicom_id, whose boxes become regions of the records they are."""
    paths: list[bytes] = []
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    sex: list[int] = []
    age: list[int] = []
    indication: list[np.ndarray] = []
    ours = texts = 0
    regions: dict[int, ImageRegions] = {}
    for record in split_records(kind, root, split):
        image = (grounded or {}).get(record.extra.get("dicom_id", ""))
        if image is not None:
            regions[len(paths)] = image_regions(image, report_text(record), report_len)
        assert record.image_path is not None  # split_records keeps only those
        paths.append(str(record.image_path).encode())
        text = report_text(record)
        texts += bool(text)
        ids.append(_report_ids(text, tokenizer, report_len))
        vector, by_us = training_labels(record)
        labels.append(vector)
        ours += by_us
        sex.append({"F": 0, "M": 1}.get(record.sex or "", UNKNOWN_SEX))
        age.append(UNKNOWN_AGE if record.age is None else min(max(record.age, 0), 254))
        indication.append(_padded(tokenizer.encode_plain(record.extra.get("indication", "")),
                                  INDICATION_WORDS, tokenizer.pad_id))
        if len(paths) == limit:
            break
    n = len(paths)
    return RecordArrays(
        np.array(paths, dtype=bytes), _stack(ids, (n, report_len), np.int16),
        _stack(labels, (n, len(CHEXPERT_LABELS)), np.uint8), np.array(sex, np.uint8),
        np.array(age, np.uint8), _stack(indication, (n, INDICATION_WORDS), np.int16), ours, texts,
        regions)


def _report_ids(text: str, tokenizer: ReportTokenizer, length: int) -> np.ndarray:
    if not text:
        return np.full(length, tokenizer.pad_id, np.int16)
    ids = [tokenizer.bos_id, *tokenizer.encode_plain(text), tokenizer.eos_id]
    return _padded(ids, length, tokenizer.pad_id)


def _padded(ids: list[int], length: int, pad: int) -> np.ndarray:
    return np.array((ids + [pad] * length)[:length], np.int16)


def _stack(rows: list[np.ndarray], shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.stack(rows).astype(dtype) if rows else np.zeros(shape, dtype)


class DiskRecords:
    """A record source (as ``StudyCache``) whose images are read from disk on demand."""

    def __init__(self, arrays: RecordArrays, spec: RecordSpec) -> None:
        self.arrays, self.spec = arrays, spec
        n = spec.grid * spec.grid
        self._empty = {"sentence": np.full(spec.report_len, -1, np.int8),
                       "ground": np.zeros(spec.report_len, bool),
                       "sentence_masks": np.zeros((MAX_SENTENCES, n), np.uint8),
                       "query_masks": np.zeros((spec.n_queries, n), np.uint8)}

    def __len__(self) -> int:
        return len(self.arrays.paths)

    def record(self, index: int) -> dict[str, np.ndarray]:
        """Raises ``UnreadableImage`` when the image cannot be decoded. An image with MS-CXR
        boxes adds ``phrase_masks``: its phrases in the model's square, not yet on the grid
        (``StreamingDataset`` warps them with the image first)."""
        a = self.arrays
        pixels = read_image(a.paths[index].decode())
        image = letterbox(pixels, self.spec.image_size)
        out = {"image": np.round(image * 65535).astype(np.uint16), "ids": a.ids[index],
               "labels": a.labels[index], "sex": a.sex[index], "age": a.age[index],
               "indication": a.indication[index], **self._empty}
        regions = a.regions.get(index)
        if regions is not None:
            out["phrase_masks"] = phrase_masks(regions, pixels.shape, self.spec.image_size)
        return out


class StreamingDataset(RecordDataset):
    """Examples of a real dataset; an unreadable image is replaced by the next readable one.

    Which images were unreadable is kept in shared memory, so every DataLoader worker skips
    an image another found bad without decoding it again, and the run counts each once.
    """

    def __init__(self, records: DiskRecords, tokenizer: ReportTokenizer, config: ModelConfig,
                 options: ExampleOptions, seed: int = 0, train: bool = True,
                 split: str = "train") -> None:
        super().__init__(records, tokenizer, config, options, seed, train)
        self.split, self.disk = split, records
        self._bad: Any = multiprocessing.RawArray("b", max(1, len(records)))

    def __getitem__(self, index: int) -> Example:
        n = len(self)
        for step in range(n):
            i = (index + step) % n
            if self._bad[i]:
                continue
            try:
                return self._example(i)
            except UnreadableImage as err:
                self._bad[i] = 1
                log.warning("skipped an unreadable image: %s split item %d (%s)",
                            self.split, i, err.reason)
        raise RuntimeError(f"no image of the {self.split} split could be read")

    def _example(self, i: int) -> Example:
        """``RecordDataset``'s example, with the geometric augmentation applied to the image
        and to its MS-CXR regions alike, and those regions' condition queries supervised."""
        a = self.disk.record(i)
        masks = a.pop("phrase_masks", None)
        geometry = self.options.geometry if self.train else 0.0
        regions = self.disk.arrays.regions.get(i) if masks is not None else None
        if regions is not None and masks is not None:
            if geometry > 0:  # the same draws as the image's below: the same affine
                masks = augment_geometry(torch.from_numpy(masks), geometry,
                                         self._geometry_rng(i)).numpy()
            a.update(region_fields(regions, masks, self.disk.spec))
        rng = np.random.default_rng([self.seed, self.epoch, i])
        options = self.options if self.train else ExampleOptions(0.0, 0.0)
        example = make_record_example(a, self.tokenizer, self.config, rng, options)
        if geometry > 0:
            example["images"] = augment_geometry(example["images"], geometry,
                                                 self._geometry_rng(i))
        if regions is not None:  # a box says the finding is there, whatever the label says
            boxed = example["query_masks"].sum(dim=1) > 0
            example["query_weight"][boxed] = 1.0
        return example

    def _geometry_rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, i, 1])

    def unreadable(self) -> int:
        return int(sum(self._bad[: len(self)]))


def describe(kind: str, split: str, arrays: RecordArrays) -> str:
    """The log line that says what a split teaches (counts, sources, label policy)."""
    return (f"{kind} {split}: {len(arrays.paths)} studies (frontal views), "
            f"{arrays.with_text} with report text, {arrays.labeled_by_us} labelled by "
            f"radreport's labeler; {SOURCES[kind]}; {LABEL_POLICY}; {_regions_line(arrays)}")


def _regions_line(arrays: RecordArrays) -> str:
    if not arrays.regions:
        return "no regions, so the grounding and query losses are zero"
    phrases = sum(len(r.boxes) for r in arrays.regions.values())
    unmatched = sum(r.unmatched for r in arrays.regions.values())
    return (f"{len(arrays.regions)} images with MS-CXR boxes ({phrases} phrases, {unmatched} "
            f"found in no report sentence), the only ones the grounding and query losses "
            f"see")


# --- what train.py calls -------------------------------------------------------------------


def check_data_config(data: DataConfig) -> None:
    """Config errors now, not an hour into a run."""
    kinds = ("phantoms", *REAL_DATASETS)
    if data.dataset not in kinds:
        raise ValueError(f"data.dataset {data.dataset!r} must be one of {kinds}")
    if data.ms_cxr and data.dataset != "mimic-cxr-jpg":
        raise ValueError(f"data.ms_cxr holds boxes on MIMIC-CXR-JPG images; data.dataset is "
                         f"{data.dataset!r}")
    if data.dataset == "phantoms":
        if data.augment_geometry:
            raise ValueError("data.augment_geometry is for real datasets: it would move a "
                             "phantom's image away from its region masks")
        return
    if data.min_word_count < 1 or data.max_studies < 0:
        raise ValueError("data.min_word_count must be at least 1, data.max_studies at least 0")
    if not 0.0 <= data.augment_geometry <= 1.0:
        raise ValueError(f"data.augment_geometry {data.augment_geometry} must be in [0, 1]")


def dataset_root(data: DataConfig) -> Path:
    """``data.root``, checked when the run starts (a config file may leave it to --set)."""
    if not data.root or not Path(data.root).is_dir():
        raise ValueError(f"data.root {data.root!r} must be the {data.dataset} folder")
    return Path(data.root)


def real_tokenizer(data: DataConfig) -> ReportTokenizer:
    """The report vocabulary of the train split's texts (the v2 prompt's tokens always
    included); words seen fewer than ``min_word_count`` times are [UNK]."""
    dataset_root(data)
    texts = corpus_texts(data.dataset, data.root, data.tokenizer_corpus)
    return ReportTokenizer.train(texts, min_frequency=data.min_word_count)


def streaming_dataset(data: DataConfig, split: str, tokenizer: ReportTokenizer,
                      model_config: ModelConfig, seed: int, train: bool,
                      progress: bool) -> StreamingDataset:
    """One split of a real dataset, its images read from disk in DataLoader workers."""
    spec = spec_for(model_config)
    grounded = read_ms_cxr(data.ms_cxr) if data.ms_cxr else None
    arrays = read_arrays(data.dataset, dataset_root(data), split, tokenizer, spec.report_len,
                         data.max_studies, grounded)
    if len(arrays.paths) == 0:
        raise ValueError(f"{data.dataset} at data.root has no {split} studies with an image "
                         f"and text or labels")
    line = describe(data.dataset, split, arrays)
    log.info(line)
    if progress:
        tqdm.write(line)
    options = ExampleOptions(data.context_dropout, data.augment, data.augment_geometry)
    return StreamingDataset(DiskRecords(arrays, spec), tokenizer, model_config, options, seed,
                            train, split)
