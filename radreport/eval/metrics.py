"""Report-level evaluation: NLG, clinical and grounding metrics with 95% bootstrap intervals.

Every metric is a *statistic of a set of studies*: a function from an index array (a
bootstrap resample of study positions, with repeats) to one float. ``bootstrap_ci``
resamples studies, so sentences of one study stay together and every metric of one system
(and of every system, with the same seed) is computed on the same resamples.

Choices that differ between papers, fixed here:

* Text is tokenized once with pycocoevalcap's PTBTokenizer (the bundled Stanford CoreNLP
  jar, run with ``java``): lowercased, punctuation tokens dropped, as in COCO caption
  evaluation. Each study has one reference report and one hypothesis.
* BLEU-n is corpus BLEU, as pycocoevalcap computes it ("closest" reference length, its
  ``tiny``/``small`` smoothing constants). Per-study clipped n-gram matches, n-gram counts
  and lengths are cached, so a resample's corpus BLEU is recomputed exactly from sums.
* CIDEr (pycocoevalcap's, which is CIDEr-D style: clipped, length-penalised) needs document
  frequencies of the reference corpus. They are taken from the full evaluation set once;
  a resample's CIDEr is the mean of those per-study scores. Recomputing frequencies per
  resample would make duplicated studies look "common" and bias CIDEr down.
* METEOR (bundled meteor-1.5 jar) and ROUGE-L are means of per-study scores. (METEOR's own
  corpus score pools alignment statistics, so it differs slightly from this mean.)
* SPICE is not computed: its wrapper downloads Stanford models at first use.
* Clinical labels are binary: uncertain (-1) counts as positive, as in ``report_vector``.
  Micro F1 pools TP/FP/FN over all 14 labels; macro F1 averages per-label F1 over the labels
  with at least one positive reference *in the resample* (F1 is undefined without one).
  Critical-finding sensitivity pools TP/(TP+FN) over ``CRITICAL_LABELS``.
* Undefined values (nothing to divide by) are NaN, never 0; bootstrap percentiles skip NaN
  resamples.
* Grounding metrics are per sentence, pooled over the sentences of the resampled studies.
"""

from __future__ import annotations

import functools
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import numpy as np

from radreport.data.labels import CHEXPERT_LABELS, CRITICAL_LABELS, NEGATIVE, POSITIVE

Statistic = Callable[[np.ndarray], float]
Interval = tuple[float, float, float]
Upsample = Literal["nearest", "bilinear"]

BLEU_ORDER: Final = 4
NLG_METRICS: Final[tuple[str, ...]] = (
    "BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
CLINICAL_METRICS: Final[tuple[str, ...]] = (
    "Clinical F1 (micro)", "Clinical F1 (macro)", "Critical sensitivity")
GROUNDING_METRICS: Final[tuple[str, ...]] = ("Grounding IoU", "Pointing game")

# pycocoevalcap's BleuScorer constants: reproduced so our corpus BLEU equals its own.
_BLEU_TINY: Final = 1e-15
_BLEU_SMALL: Final = 1e-9


# --- NLG ------------------------------------------------------------------------------------

def tokenize(texts: Sequence[str]) -> list[str]:
    """PTB-tokenize all texts in one JVM call (starting Java per text would take minutes)."""
    if shutil.which("java") is None:
        raise RuntimeError("java is needed for pycocoevalcap's PTBTokenizer and METEOR")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = {i: [{"caption": text}] for i, text in enumerate(texts)}
    tokenized = PTBTokenizer().tokenize(captions)
    # METEOR's stdio protocol separates fields with '|||'.
    return [tokenized[i][0].replace("|||", "").replace("  ", " ") for i in range(len(texts))]


@functools.cache
def _meteor() -> Any:
    """One METEOR JVM per process: it takes ~10 s to load its paraphrase tables."""
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _bleu_counts(refs: list[str], hyps: list[str]) -> dict[str, np.ndarray]:
    """Per-study BLEU statistics and sentence BLEU, from pycocoevalcap's own cooking."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer

    scorer = BleuScorer(n=BLEU_ORDER)
    for ref, hyp in zip(refs, hyps, strict=True):
        scorer += (hyp, [ref])
    _, sentence_bleu = scorer.compute_score(option="closest", verbose=0)
    tests = scorer.ctest
    counts = {
        "bleu_correct": np.array([t["correct"] for t in tests], dtype=np.int64),
        "bleu_guess": np.array([t["guess"] for t in tests], dtype=np.int64),
        "hyp_len": np.array([t["testlen"] for t in tests], dtype=np.int64),
        "ref_len": np.array([scorer._single_reflen(t["reflen"], "closest", t["testlen"])
                             for t in tests], dtype=np.int64),
    }
    for k in range(BLEU_ORDER):
        counts[f"BLEU-{k + 1}"] = np.asarray(sentence_bleu[k], dtype=np.float64)
    return counts


def nlg_scores(references: list[str], hypotheses: list[str]) -> dict[str, np.ndarray]:
    """Per-study NLG scores and the cached BLEU statistics that corpus BLEU needs.

    Keys: ``BLEU-1..4`` (sentence BLEU, for inspection only; the table uses
    ``corpus_bleu``), ``METEOR``, ``ROUGE-L``, ``CIDEr`` (each shape (N,)), and
    ``bleu_correct``/``bleu_guess`` (N, 4), ``hyp_len``/``ref_len`` (N,).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no studies to score")
    from pycocoevalcap.rouge.rouge import Rouge

    tokens = tokenize([*references, *hypotheses])
    refs, hyps = tokens[: len(references)], tokens[len(references):]
    gts = {i: [r] for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    scores = _bleu_counts(refs, hyps)
    scores["METEOR"] = np.asarray(_meteor().compute_score(gts, res)[1], dtype=np.float64)
    scores["ROUGE-L"] = np.asarray(Rouge().compute_score(gts, res)[1], dtype=np.float64)
    scores["CIDEr"] = _cider(gts, res)
    return scores


def _cider(gts: dict[int, list[str]], res: dict[int, list[str]]) -> np.ndarray:
    """Per-study CIDEr with document frequencies of the whole reference set."""
    from pycocoevalcap.cider.cider import Cider

    if not any(ref.strip() for refs in gts.values() for ref in refs):
        return np.zeros(len(gts))  # pycocoevalcap asserts on an all-empty corpus
    return np.asarray(Cider().compute_score(gts, res)[1], dtype=np.float64)


def corpus_bleu(scores: Mapping[str, np.ndarray], idx: np.ndarray | None = None) -> list[float]:
    """Corpus BLEU-1..4 over studies ``idx`` (all by default), exactly as pycocoevalcap does.

    Same operations in the same order as ``BleuScorer.compute_score``, on integer sums, so
    on the full set the result equals pycocoevalcap's corpus score bit for bit.
    """
    if idx is None:
        idx = np.arange(len(scores["hyp_len"]))
    correct = scores["bleu_correct"][idx].sum(axis=0)
    guess = scores["bleu_guess"][idx].sum(axis=0)
    testlen = int(scores["hyp_len"][idx].sum())
    reflen = int(scores["ref_len"][idx].sum())
    bleus: list[float] = []
    bleu = 1.0
    for k in range(len(correct)):
        bleu *= float(int(correct[k]) + _BLEU_TINY) / (int(guess[k]) + _BLEU_SMALL)
        bleus.append(bleu ** (1.0 / (k + 1)))
    ratio = (testlen + _BLEU_TINY) / (reflen + _BLEU_SMALL)
    if ratio < 1:
        bleus = [b * math.exp(1 - 1 / ratio) for b in bleus]
    return bleus


def nlg_statistics(scores: Mapping[str, np.ndarray]) -> dict[str, Statistic]:
    """Table rows for NLG: corpus BLEU from summed counts, means of per-study scores."""
    stats: dict[str, Statistic] = {
        f"BLEU-{k + 1}": functools.partial(_corpus_bleu_k, scores, k) for k in range(BLEU_ORDER)}
    for name in ("METEOR", "ROUGE-L", "CIDEr"):
        stats[name] = functools.partial(_mean_at, scores[name])
    return stats


def _corpus_bleu_k(scores: Mapping[str, np.ndarray], k: int, idx: np.ndarray) -> float:
    return corpus_bleu(scores, idx)[k]


def _mean_at(values: np.ndarray, idx: np.ndarray) -> float:
    return float(values[idx].mean())


# --- clinical -------------------------------------------------------------------------------

def label_matrix(vectors: Sequence[Mapping[str, int | None]]) -> np.ndarray:
    """(N, 14) 0/1 matrix in ``CHEXPERT_LABELS`` order; uncertain counts as positive."""
    return np.array(
        [[int(v.get(label) in (POSITIVE, -1)) for label in CHEXPERT_LABELS] for v in vectors],
        dtype=np.int8,
    ).reshape(len(vectors), len(CHEXPERT_LABELS))


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def _confusion(ref: np.ndarray, hyp: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-label TP, FP, FN over the studies ``idx``."""
    r, h = ref[idx], hyp[idx]
    return (r & h).sum(axis=0), (~r & h).sum(axis=0), (r & ~h).sum(axis=0)


def _micro_f1(ref: np.ndarray, hyp: np.ndarray, idx: np.ndarray) -> float:
    tp, fp, fn = (int(c.sum()) for c in _confusion(ref, hyp, idx))
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _macro_f1(ref: np.ndarray, hyp: np.ndarray, idx: np.ndarray) -> float:
    """Mean F1 over labels with a positive reference; a label never present has no F1."""
    tp, fp, fn = _confusion(ref, hyp, idx)
    present = (tp + fn) > 0
    if not present.any():
        return math.nan
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return float(f1.mean())


def _sensitivity(ref: np.ndarray, hyp: np.ndarray, cols: np.ndarray, idx: np.ndarray) -> float:
    tp, _, fn = _confusion(ref[:, cols], hyp[:, cols], idx)
    return _ratio(int(tp.sum()), int(tp.sum() + fn.sum()))


def _per_label(ref: np.ndarray, hyp: np.ndarray, col: int, kind: str, idx: np.ndarray) -> float:
    tp, fp, fn = (int(c[0]) for c in _confusion(ref[:, [col]], hyp[:, [col]], idx))
    if kind == "precision":
        return _ratio(tp, tp + fp)
    if kind == "recall":
        return _ratio(tp, tp + fn)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def clinical_scores(ref_labels: np.ndarray, hyp_labels: np.ndarray) -> dict[str, Statistic]:
    """Clinical-efficacy statistics over (N, 14) 0/1 label matrices (``CHEXPERT_LABELS`` order).

    Keys: the three ``CLINICAL_METRICS`` and ``"<precision|recall|F1> <label>"`` per label.
    """
    ref, hyp = _as_bool(ref_labels), _as_bool(hyp_labels)
    if ref.shape != hyp.shape:
        raise ValueError(f"label matrices differ in shape: {ref.shape} vs {hyp.shape}")
    critical = np.array([i for i, name in enumerate(CHEXPERT_LABELS) if name in CRITICAL_LABELS])
    stats: dict[str, Statistic] = {
        "Clinical F1 (micro)": functools.partial(_micro_f1, ref, hyp),
        "Clinical F1 (macro)": functools.partial(_macro_f1, ref, hyp),
        "Critical sensitivity": functools.partial(_sensitivity, ref, hyp, critical),
    }
    for col, name in enumerate(CHEXPERT_LABELS):
        for kind in ("precision", "recall", "F1"):
            stats[f"{kind} {name}"] = functools.partial(_per_label, ref, hyp, col, kind)
    return stats


def _as_bool(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != len(CHEXPERT_LABELS):
        raise ValueError(f"expected (N, {len(CHEXPERT_LABELS)}) labels, got {labels.shape}")
    return labels != NEGATIVE


# --- grounding ------------------------------------------------------------------------------

def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` boxes with exclusive ends (the phantoms' convention)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return _ratio(inter, union)


def mask_iou(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """IoU of two same-shape boolean masks; NaN when both are empty (nothing to compare)."""
    pred, true = np.asarray(pred_mask, dtype=bool), np.asarray(true_mask, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {true.shape}")
    return _ratio(int((pred & true).sum()), int((pred | true).sum()))


def _source_coords(out: int, src: int) -> np.ndarray:
    """Continuous source coordinates of output pixel centres (half-pixel aligned)."""
    return (np.arange(out) + 0.5) * src / out - 0.5


def upsample(heatmap: np.ndarray, shape: tuple[int, int],
             mode: Upsample = "bilinear") -> np.ndarray:
    """Resize a patch-grid heatmap (h, w) to image pixels (H, W).

    Cell (r, c) of the grid covers pixels ``[r*H/h, (r+1)*H/h)`` (and likewise for columns):
    grid and image share their outer edges, like ``torch.nn.functional.interpolate`` with
    ``align_corners=False``. ``nearest`` gives each pixel the cell containing its centre;
    ``bilinear`` interpolates between cell centres, clamping at the border.
    """
    grid = np.asarray(heatmap, dtype=np.float64)
    if grid.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {grid.shape}")
    (h, w), (big_h, big_w) = grid.shape, shape
    ys, xs = _source_coords(big_h, h), _source_coords(big_w, w)
    if mode == "nearest":
        rows = np.clip(np.floor(ys + 0.5).astype(int), 0, h - 1)
        cols = np.clip(np.floor(xs + 0.5).astype(int), 0, w - 1)
        return grid[np.ix_(rows, cols)]
    return _interp_axis(_interp_axis(grid, ys, axis=0), xs, axis=1)


def _interp_axis(grid: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    """Linear interpolation of ``grid`` along ``axis`` at ``coords``, clamped to the edges."""
    size = grid.shape[axis]
    coords = np.clip(coords, 0, size - 1)
    lo = np.floor(coords).astype(int)
    hi = np.minimum(lo + 1, size - 1)
    frac = coords - lo
    a, b = np.take(grid, lo, axis=axis), np.take(grid, hi, axis=axis)
    frac = frac[:, None] if axis == 0 else frac[None, :]
    return a * (1 - frac) + b * frac


def _require_region(true_mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(true_mask, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise ValueError("a grounded sentence needs a non-empty 2-D region mask")
    return mask


def pointing_hit(heatmap: np.ndarray, true_mask: np.ndarray) -> bool:
    """Pointing game: does the heatmap's peak cell, mapped to image pixels, hit the region?

    The peak is ``np.argmax`` (the first cell in row-major order on ties); the pixel tested
    is the one under that cell's centre, so a full-resolution heatmap tests its own argmax.
    No tolerance margin around the region.
    """
    mask = _require_region(true_mask)
    grid = np.asarray(heatmap)
    r, c = np.unravel_index(int(np.argmax(grid)), grid.shape)
    y = min(int((r + 0.5) * mask.shape[0] / grid.shape[0]), mask.shape[0] - 1)
    x = min(int((c + 0.5) * mask.shape[1] / grid.shape[1]), mask.shape[1] - 1)
    return bool(mask[y, x])


def grounding_iou(heatmap: np.ndarray, true_mask: np.ndarray, threshold: float = 0.5,
                  mode: Upsample = "bilinear") -> float:
    """IoU between the region and the upsampled heatmap cut at ``threshold`` × its maximum.

    A relative cut makes the score independent of the heatmap's scale (attention weights
    and saliency maps differ by orders of magnitude). An all-zero heatmap predicts nothing.
    """
    mask = _require_region(true_mask)
    up = upsample(heatmap, (mask.shape[0], mask.shape[1]), mode)
    if (up < 0).any():
        raise ValueError("heatmaps must be non-negative (a cut relative to the max needs it)")
    peak = float(up.max())
    pred = up >= threshold * peak if peak > 0 else np.zeros_like(mask)
    return mask_iou(pred, mask)


GroundedSentence = tuple[np.ndarray, np.ndarray]  # (heatmap (h, w), region mask (H, W))


def grounding_statistics(grounding: Sequence[Sequence[GroundedSentence]], threshold: float = 0.5,
                         mode: Upsample = "bilinear") -> dict[str, Statistic]:
    """Per-sentence IoU and pointing, pooled over the sentences of the resampled studies."""
    iou_sum, hit_sum, count = (np.zeros(len(grounding)) for _ in range(3))
    for i, sentences in enumerate(grounding):
        count[i] = len(sentences)
        for heatmap, mask in sentences:
            iou_sum[i] += grounding_iou(heatmap, mask, threshold, mode)
            hit_sum[i] += pointing_hit(heatmap, mask)
    return {
        "Grounding IoU": functools.partial(_pooled, iou_sum, count),
        "Pointing game": functools.partial(_pooled, hit_sum, count),
    }


def _pooled(totals: np.ndarray, counts: np.ndarray, idx: np.ndarray) -> float:
    return _ratio(float(totals[idx].sum()), float(counts[idx].sum()))


# --- bootstrap and the table ----------------------------------------------------------------

def bootstrap_ci(statistic: Statistic, n: int, resamples: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> Interval:
    """Point estimate on all ``n`` studies and a percentile bootstrap interval.

    Resamples are drawn from ``seed`` alone, so every metric and every system evaluated
    with the same seed and ``n`` sees the same resampled study sets (paired comparison).
    """
    if n < 1 or resamples < 1 or not 0 < alpha < 1:
        raise ValueError("need n >= 1, resamples >= 1 and 0 < alpha < 1")
    point = statistic(np.arange(n))
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)])
    if np.isnan(values).all():
        return point, math.nan, math.nan
    low, high = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(low), float(high)


def evaluate_reports(
    references: list[str],
    hypotheses: list[str],
    ref_labels: np.ndarray | Sequence[Mapping[str, int | None]],
    hyp_labels: np.ndarray | Sequence[Mapping[str, int | None]] | None = None,
    grounding: Sequence[Sequence[GroundedSentence]] | None = None,
    *,
    per_label: bool = False,
    resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    extra: Mapping[str, Statistic] | None = None,
) -> dict[str, Interval]:
    """Every table metric for one system: ``metric -> (point, low, high)``.

    ``hyp_labels`` default to ``report_vector`` on the hypotheses; ``grounding`` holds, per
    study, its grounded sentences as (heatmap, region mask) pairs; without it (a system that
    does not ground) the grounding rows are left out. ``extra`` statistics (a model's
    safety rows) are bootstrapped on the same resamples.
    """
    n = len(references)
    stats = nlg_statistics(nlg_scores(references, hypotheses))
    if hyp_labels is None:
        from radreport.eval.labeler import report_vector

        hyp_labels = [report_vector(text) for text in hypotheses]
    clinical = clinical_scores(_to_matrix(ref_labels, n), _to_matrix(hyp_labels, n))
    stats |= {k: v for k, v in clinical.items() if per_label or k in CLINICAL_METRICS}
    if grounding is not None:
        if len(grounding) != n:
            raise ValueError(f"grounding for {len(grounding)} studies, expected {n}")
        stats |= grounding_statistics(grounding)
    stats |= dict(extra or {})
    return {name: bootstrap_ci(stat, n, resamples, seed, alpha) for name, stat in stats.items()}


def _to_matrix(labels: np.ndarray | Sequence[Mapping[str, int | None]], n: int) -> np.ndarray:
    matrix = labels if isinstance(labels, np.ndarray) else label_matrix(labels)
    if len(matrix) != n:
        raise ValueError(f"labels for {len(matrix)} studies, expected {n}")
    return matrix


def format_table(rows: Mapping[str, Mapping[str, Interval]], digits: int = 3) -> str:
    """One plain-text table: metrics as rows, systems (the keys of ``rows``) as columns.

    A metric a system lacks (grounding for a non-grounding baseline) shows as ``-``.
    """
    systems = list(rows)
    metrics = list(dict.fromkeys(m for system in systems for m in rows[system]))
    header = ["metric", *systems]
    body = [[m, *(_cell(rows[s].get(m), digits) for s in systems)] for m in metrics]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [_join(header, widths), _join(["-" * w for w in widths], widths)]
    lines += [_join(line, widths) for line in body]
    return "\n".join(lines)


def _cell(value: Interval | None, digits: int) -> str:
    if value is None:
        return "-"
    point, low, high = (_num(v, digits) for v in value)
    return f"{point} [{low}, {high}]"


def _num(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _join(cells: list[str], widths: list[int]) -> str:
    return "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True)).rstrip()
