"""The v2 decoder's prompt: what the label head found, then the optional clinical context.

The report must state what the head detects and nothing it rules out, so the decoder is
conditioned on the head's decisions: one token per CheXpert label saying present or
absent, written before BOS. In training the prompt holds the true labels (the text always
agrees with them), so the decoder learns to follow the prompt for *what* to report and to
read the image for *where* and *how much*. At inference the prompt holds the calibrated
head's thresholded decisions, which is what makes text and head agree.

The clinical context follows (seeds 000 and 001): sex, age decade and the indication's
first words, each replaceable by "unknown" tokens, because DICOM pushes rarely carry an
indication and our DICOM path keeps no patient attributes. Training drops each part at
random so the model works without them.

Layout (``PROMPT_LEN`` positions, then BOS): 14 label tokens, sex, age, indication words
padded with PAD. Everything here is plain Python, so serving needs no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from radreport.data.labels import CHEXPERT_LABELS, PARENT_LABEL

INDICATION_WORDS = 12
SEXES: tuple[str, ...] = ("F", "M", "?")
AGE_DECADES = 10  # 0-9, 10-19, ..., 90+
PROMPT_LEN = len(CHEXPERT_LABELS) + 2 + INDICATION_WORDS


def label_token(index: int, present: bool) -> str:
    return f"[L{index:02d}{'+' if present else '-'}]"


def sex_token(sex: str | None) -> str:
    return f"[SEX{sex if sex in SEXES else '?'}]"


def age_token(age_years: int | None) -> str:
    if age_years is None or age_years < 0:
        return "[AGE?]"
    return f"[AGE{min(age_years // 10, AGE_DECADES - 1)}]"


PROMPT_TOKENS: tuple[str, ...] = (
    *(label_token(i, p) for i in range(len(CHEXPERT_LABELS)) for p in (True, False)),
    *(sex_token(s) for s in SEXES),
    "[AGE?]", *(f"[AGE{d}]" for d in range(AGE_DECADES)),
)


@dataclass(frozen=True)
class ClinicalContext:
    """What a request may say about the patient; every field optional."""

    indication: str | None = None
    age_years: int | None = None
    sex: str | None = None


def consistent_findings(present: Sequence[bool]) -> list[bool]:
    """Decisions closed under CheXpert's rules, so the prompt is one the text can state:
    a parenchymal finding implies Lung Opacity, and No Finding holds iff nothing but
    support devices is present."""
    labels = dict(zip(CHEXPERT_LABELS, (bool(p) for p in present), strict=True))
    opacity_children = [child for child, parent in PARENT_LABEL.items()
                        if parent == "Lung Opacity"]
    labels["Lung Opacity"] = any(labels[c] for c in opacity_children)
    labels["No Finding"] = not any(v for k, v in labels.items()
                                   if k not in ("No Finding", "Support Devices"))
    return [labels[name] for name in CHEXPERT_LABELS]


def prompt_tokens(present: Sequence[bool], context: ClinicalContext | None,
                  indication_ids: Sequence[int], pad_token: str) -> list[str | int]:
    """The prompt as token names (special tokens) and ids (indication words).

    ``indication_ids`` are the indication's word ids in the report vocabulary (the caller
    tokenizes); they are cut or padded to ``INDICATION_WORDS``.
    """
    context = context or ClinicalContext()
    findings = consistent_findings(present)
    words: list[str | int] = [label_token(i, p) for i, p in enumerate(findings)]
    words += [sex_token(context.sex), age_token(context.age_years)]
    ids = list(indication_ids)[:INDICATION_WORDS] if context.indication else []
    words += ids
    words += [pad_token] * (INDICATION_WORDS - len(ids))
    return words
