"""Pieces shared by the training data: report pieces, content words, area downsampling.

Every token carries its sentence's region on the patch grid (area-downsampled, so a patch
half covered by the mask holds 0.5); records and examples are built in ``cache.py``.
Only content words are marked for the grounding loss: "pneumothorax" and "left" should
look at the pneumothorax, "is" and "." have nothing to look at. A pertinent negative
("No pleural effusion.") looks at the organ it speaks of (the lungs), so its map shows
what was checked. ``DataConfig`` is the ``[data]`` section of a training config: what
``train.py`` and the real-dataset records (``records.py``) both read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from radreport.data.phantoms.generator import generate_study
from radreport.data.phantoms.study import PhantomStudy, Sentence


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "phantoms"  # or mimic-cxr-jpg, iu-xray, chexpert (records.py), from root
    root: str = ""  # the real dataset's folder, as open_dataset reads it
    train_seeds: tuple[int, int] = (0, 4000)  # (first, count) of the benchmark train split
    validate_seeds: tuple[int, int] = (1_000_000, 200)
    study_size: int = 512  # rendered at this size, then area-downsampled to model.image_size
    tokenizer_corpus: int = 2000  # the first N train reports build the vocabulary
    min_word_count: int = 1  # rarer words of that corpus become [UNK] (never a target)
    max_studies: int = 0  # real datasets: at most this many per split (0: all)
    num_workers: int = 2  # processes rendering the cache, or reading a real dataset's images
    cache: bool = True  # render once into memmaps on disk; later epochs only read them
    cache_dir: str = ""  # "" = <run dir>/cache
    context_dropout: float = 0.5  # v2 prompt: chance of leaving out indication, age/sex
    augment: float = 0.0  # intensity augmentation strength; never flips (laterality)
    augment_geometry: float = 0.0  # real datasets: rotation/scale/shift strength; no flips
    ms_cxr: str = ""  # mimic-cxr-jpg: MS-CXR's CSV; its boxes ground their images (regions.py)


STOPWORDS: frozenset[str] = frozenset({
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "being", "there", "this",
    "that", "these", "those", "it", "its", "of", "in", "on", "at", "to", "with", "without",
    "and", "or", "by", "for", "as", "from", "into", "over", "than", "which", "who", "no",
    "not", "also", "both", "seen", "present", "noted", "identified", "measuring",
})

Example = dict[str, Tensor]


def is_content_word(token: str) -> bool:
    return token.isalpha() and token not in STOPWORDS


def area_downsample(array: np.ndarray, size: int) -> Tensor:
    """(H, W) -> (size, size) float32 by area averaging (exact block means when divisible)."""
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    return F.interpolate(x, size=(size, size), mode="area")[0, 0]


def report_pieces(study: PhantomStudy) -> list[tuple[str, Sentence | None]]:
    """The report as text pieces in ``report_text`` order; headers carry no sentence."""
    pieces: list[tuple[str, Sentence | None]] = [("FINDINGS:", None)]
    pieces += [(s.text, s) for s in study.sentences if s.section == "findings"]
    pieces.append(("\n\nIMPRESSION:", None))
    pieces += [(s.text, s) for s in study.sentences if s.section == "impression"]
    return pieces


def phantom_report_texts(seeds: Iterable[int], size: int = 256) -> list[str]:
    """Report texts and clinical indications of phantom studies, for training a tokenizer
    (the v2 prompt spells the indication in the report vocabulary)."""
    studies = (generate_study(seed, size) for seed in seeds)
    return [text for s in studies for text in (s.report_text, s.clinical_indication)]
