"""The model v2 rows of ``radreport evaluate``: per-label quality, calibration, review, OOD,
laterality and the grounding of negative and anatomical sentences.

Each row is a ``Statistic`` (index array of studies -> float), so it is bootstrapped on the
same resamples as every other row and column. Conventions:

* What the text states comes from the labeler on the whole report (as clinical F1 does);
  what the head decides is the draft's ``findings_present`` (calibrated thresholds).
* A study is *flagged for review* by the model when a critical finding is uncertain, when
  head and text disagree on a critical finding, or when it is out of distribution
  (``review_reasons``). The services add image-quality reasons the model cannot see.
* Laterality: generated sentences about a lateralised finding, paired with the reference
  sentence of the same finding, state the same side (left, right or bilateral).
* Negative and anatomical sentences (pertinent negatives, global statements) are scored
  against the organ they speak of, found from the generator's own phrasing tables; the
  baseline answers the mean training mask of that organ whatever the image.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from radreport.data.labels import CHEXPERT_LABELS, CRITICAL_LABELS
from radreport.data.phantoms.reports import FILLERS, NEGATIVES
from radreport.eval.labeler import label_sentence, report_vector
from radreport.eval.metrics import Statistic, grounding_iou, label_matrix
from radreport.model.calibration import expected_calibration_error
from radreport.model.query_grounding import side_of
from radreport.model.report import DraftReport
from radreport.model.safety import model_review_reasons

if TYPE_CHECKING:
    from radreport.eval.evaluate import TestCase

CRITICAL = tuple(name for name in CHEXPERT_LABELS if name in CRITICAL_LABELS)
LATERAL_LABELS = frozenset({"Pleural Effusion", "Pneumothorax", "Consolidation", "Lung Lesion",
                            "Atelectasis", "Fracture", "Pleural Other"})
NO_CEILING = tuple(i for i, name in enumerate(CHEXPERT_LABELS) if name != "Pneumonia")
# The region each negative or global phrasing of the generator speaks of.
SENTENCE_REGION: dict[str, str] = {
    **{text: region for _, region, _, phrasings in NEGATIVES for text in phrasings},
    **dict(FILLERS),
    "No pleural effusion or pneumothorax.": "lungs",
    "No acute cardiopulmonary process.": "chest",
    "No acute cardiopulmonary abnormality.": "chest",
}
NEGATIVE_LABEL_REGION: dict[str, str] = {
    label: region for _, region, labels, _ in NEGATIVES for label in labels}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def _pooled(num: np.ndarray, den: np.ndarray, idx: np.ndarray) -> float:
    return _ratio(float(num[idx].sum()), float(den[idx].sum()))


def _mean(values: np.ndarray, idx: np.ndarray) -> float:
    return float(values[idx].mean()) if len(idx) else math.nan


def _macro_f1(ref: np.ndarray, hyp: np.ndarray, cols: Sequence[int], idx: np.ndarray) -> float:
    scores = []
    for col in cols:
        r, h = ref[idx, col], hyp[idx, col]
        tp, fp, fn = (r & h).sum(), (~r & h).sum(), (r & ~h).sum()
        if tp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else math.nan


def _specificity(ref: np.ndarray, hyp: np.ndarray, col: int, idx: np.ndarray) -> float:
    r, h = ref[idx, col], hyp[idx, col]
    return _ratio(float((~r & ~h).sum()), float((~r).sum()))


def _ece(probs: np.ndarray, ref: np.ndarray, col: int, idx: np.ndarray) -> float:
    return expected_calibration_error(probs[idx, col], ref[idx, col].astype(float))


def _worst_ece(probs: np.ndarray, ref: np.ndarray, cols: Sequence[int],
               idx: np.ndarray) -> float:
    return max(_ece(probs, ref, col, idx) for col in cols)


def _sensitivity_where(ref: np.ndarray, hyp: np.ndarray, cols: Sequence[int],
                       keep: np.ndarray, idx: np.ndarray) -> float:
    sel = idx[keep[idx]]
    r, h = ref[sel][:, cols], hyp[sel][:, cols]
    return _ratio(float((r & h).sum()), float(r.sum()))


def laterality_counts(draft: DraftReport, case: TestCase) -> tuple[int, int]:
    """(correct, scored) sides of the draft's lateralised finding sentences."""
    from radreport.eval.evaluate import stated_findings

    correct = scored = 0
    for sentence in draft.sentences:
        stated = stated_findings(sentence.text) & LATERAL_LABELS
        refs = [r for r in case.positives if stated & r.labels]
        if not refs:
            continue
        best = max(refs, key=lambda r: (len(stated & r.labels) / len(stated | r.labels),
                                        r.section == sentence.section))
        truth = side_of(best.text)
        if truth is None:
            continue
        scored += 1
        correct += side_of(sentence.text) == truth
    return correct, scored


def anatomy_region(text: str) -> str | None:
    """The organ a negative or global sentence speaks of, or None for a finding."""
    if text in SENTENCE_REGION:
        return SENTENCE_REGION[text]
    values = label_sentence(text)
    if any(v != 0 for k, v in values.items() if k != "No Finding"):
        return None  # states (or hedges) a finding: scored with the findings
    regions = {NEGATIVE_LABEL_REGION[k] for k, v in values.items()
               if v == 0 and k in NEGATIVE_LABEL_REGION}
    return regions.pop() if len(regions) == 1 else None


def anatomy_ious(draft: DraftReport, case: TestCase,
                 baseline: dict[str, np.ndarray]) -> tuple[list[float], list[float]]:
    """IoU of each negative/anatomical sentence's map, and of the mean-mask baseline."""
    model, base = [], []
    for sentence in draft.sentences:
        region = anatomy_region(sentence.text)
        if region is None or region not in case.anatomy:
            continue
        mask = case.anatomy[region]
        model.append(grounding_iou(sentence.heatmap, mask))
        base.append(grounding_iou(baseline[region], mask))
    return model, base


def mean_anatomy_masks(cases: Sequence[TestCase]) -> dict[str, np.ndarray]:
    """Per organ, the mean mask over ``cases`` (training studies): the image-blind answer."""
    names = cases[0].anatomy.keys()
    return {name: np.mean([c.anatomy[name] for c in cases], axis=0).astype(np.float32)
            for name in names}


def safety_statistics(drafts: Sequence[DraftReport], cases: Sequence[TestCase],
                      baseline: dict[str, np.ndarray] | None = None) -> dict[str, Statistic]:
    """The v2 rows for one system; see the module docstring."""
    ref = np.array([c.labels for c in cases], dtype=bool)
    hyp = label_matrix([report_vector(d.text) for d in drafts]).astype(bool)
    crit = [CHEXPERT_LABELS.index(name) for name in CRITICAL]
    stats: dict[str, Statistic] = {
        "Clinical F1 (macro, no Pneumonia)": functools.partial(_macro_f1, ref, hyp, NO_CEILING)}
    for col, name in enumerate(CHEXPERT_LABELS):
        stats[f"F1 {name}"] = functools.partial(_macro_f1, ref, hyp, [col])
    for col, name in zip(crit, CRITICAL, strict=True):
        stats[f"Sensitivity {name}"] = functools.partial(_label_sensitivity, ref, hyp, col)
        stats[f"Specificity {name}"] = functools.partial(_specificity, ref, hyp, col)
    safety = [d.safety for d in drafts]
    if all(s is not None for s in safety):
        probs = np.array([[s.calibrated_probs[k] for k in CHEXPERT_LABELS]
                          for s in safety if s is not None])
        for col, name in enumerate(CHEXPERT_LABELS):
            stats[f"ECE {name}"] = functools.partial(_ece, probs, ref, col)
        stats["ECE (worst critical)"] = functools.partial(_worst_ece, probs, ref, crit)
        reasons = [model_review_reasons(s.findings_present, s.uncertain_findings,
                                        s.out_of_distribution, _stated(row))
                   for s, row in zip(safety, hyp, strict=True) if s is not None]
        disagree = np.array([any(r.startswith("critical finding disagreement") for r in rs)
                             for rs in reasons], dtype=float)
        flagged = np.array([bool(rs) for rs in reasons])
        ood = np.array([bool(s is not None and s.out_of_distribution) for s in safety],
                       dtype=float)
        stats["Head/text disagreement (critical)"] = functools.partial(_mean, disagree)
        stats["Review-flag rate"] = functools.partial(_mean, flagged.astype(float))
        stats["Critical sensitivity (unflagged)"] = functools.partial(
            _sensitivity_where, ref, hyp, crit, ~flagged)
        stats["OOD flag rate"] = functools.partial(_mean, ood)
    lateral = np.array([laterality_counts(d, c) for d, c in zip(drafts, cases, strict=True)],
                       dtype=float).reshape(len(drafts), 2)
    stats["Laterality accuracy"] = functools.partial(_pooled, lateral[:, 0], lateral[:, 1])
    if baseline is not None:
        pairs = [anatomy_ious(d, c, baseline) for d, c in zip(drafts, cases, strict=True)]
        count = np.array([len(m) for m, _ in pairs], dtype=float)
        stats["Grounding IoU (negative/anatomical)"] = functools.partial(
            _pooled, np.array([sum(m) for m, _ in pairs]), count)
        stats["Grounding IoU (anatomy, mean-mask baseline)"] = functools.partial(
            _pooled, np.array([sum(b) for _, b in pairs]), count)
    return stats


def _stated(row: np.ndarray) -> set[str]:
    return {name for name, said in zip(CHEXPERT_LABELS, row, strict=True) if said}


def _label_sensitivity(ref: np.ndarray, hyp: np.ndarray, col: int, idx: np.ndarray) -> float:
    r, h = ref[idx, col], hyp[idx, col]
    return _ratio(float((r & h).sum()), float(r.sum()))
