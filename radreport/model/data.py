"""Training examples made on the fly from phantom seeds: image, tokens, and where each word is.

Every token carries its sentence's region on the patch grid (area-downsampled, so a patch
half covered by the mask holds 0.5). Only content words of sentences about a positive
finding are marked for the grounding loss: "pneumothorax" and "left" should look at the
pneumothorax, "is" and "." have nothing to look at, and a pertinent negative ("No pleural
effusion.") names a region where, by definition, nothing is visible.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from radreport.data.labels import CHEXPERT_LABELS, POSITIVE
from radreport.data.phantoms.generator import generate_study
from radreport.data.phantoms.study import PhantomStudy, Sentence
from radreport.model.config import ModelConfig
from radreport.model.tokenizer import ReportTokenizer

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


def token_regions(study: PhantomStudy, tokenizer: ReportTokenizer,
                  grid: int) -> tuple[list[int], Tensor, Tensor]:
    """ids ``[BOS] ... [EOS]`` (L,), region per token (L, grid*grid), finding flags (L,)."""
    n = grid * grid
    ids = [tokenizer.bos_id]
    masks = [torch.zeros(n)]
    finding = [False]
    for text, sentence in report_pieces(study):
        piece = tokenizer.encode_plain(text)
        region = (torch.zeros(n) if sentence is None
                  else area_downsample(sentence.mask, grid).flatten())
        positive = sentence is not None and sentence.is_positive
        ids += piece
        masks += [region] * len(piece)
        finding += [positive and is_content_word(tokenizer.id_to_token(i)) for i in piece]
    ids.append(tokenizer.eos_id)
    masks.append(torch.zeros(n))
    finding.append(False)
    return ids, torch.stack(masks), torch.tensor(finding)


def label_targets(study: PhantomStudy) -> Tensor:
    """14 floats, 1 for positive; uncertain counts as not positive."""
    return torch.tensor([float(study.labels[name] == POSITIVE) for name in CHEXPERT_LABELS])


def make_example(study: PhantomStudy, tokenizer: ReportTokenizer, config: ModelConfig) -> Example:
    """Shifted input/target pair; masks and flags are aligned with ``targets``.

    Sequences longer than ``max_len + 1`` ids are cut (losing EOS); shorter ones are padded.
    """
    ids, masks, finding = token_regions(study, tokenizer, config.grid)
    length = config.max_len + 1
    ids, masks, finding = ids[:length], masks[:length], finding[:length]
    pad = length - len(ids)
    seq = torch.tensor(ids + [tokenizer.pad_id] * pad)  # (max_len + 1,)
    masks = F.pad(masks, (0, 0, 0, pad))
    finding = F.pad(finding, (0, pad))
    return {
        "images": area_downsample(study.image, config.image_size)[None],  # (1, S, S)
        "tokens": seq[:-1],  # (max_len,)
        "targets": seq[1:],  # (max_len,)
        "region_masks": masks[1:],  # (max_len, N)
        "finding_token_mask": finding[1:],  # (max_len,) bool
        "label_targets": label_targets(study),  # (n_labels,)
    }


class PhantomReportDataset(Dataset[Example]):
    """Item i is phantom study ``seeds[i]``, rendered at ``study_size`` then downsampled.

    Keys match ``RadReportModel.forward``'s arguments, so ``model(**batch)`` works.
    """

    def __init__(self, seeds: Sequence[int], tokenizer: ReportTokenizer, config: ModelConfig,
                 study_size: int = 256) -> None:
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"tokenizer vocab_size {tokenizer.vocab_size} exceeds "
                             f"config.vocab_size {config.vocab_size}")
        if study_size < config.image_size:
            raise ValueError(f"study_size {study_size} is smaller than "
                             f"config.image_size {config.image_size}")
        self.seeds = list(seeds)
        self.tokenizer, self.config, self.study_size = tokenizer, config, study_size

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> Example:
        study = generate_study(self.seeds[index], self.study_size)
        return make_example(study, self.tokenizer, self.config)


def phantom_report_texts(seeds: Iterable[int], size: int = 256) -> list[str]:
    """Report texts and clinical indications of phantom studies, for training a tokenizer
    (the v2 prompt spells the indication in the report vocabulary)."""
    studies = (generate_study(seed, size) for seed in seeds)
    return [text for s in studies for text in (s.report_text, s.clinical_indication)]
