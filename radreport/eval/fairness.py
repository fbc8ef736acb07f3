"""``radreport audit fairness``: metrics by sex, age group and race/ethnicity (seed 000 §3.9).

Every metric is a ``Statistic`` (index array of studies -> float) over the whole audited set,
the same objects ``radreport evaluate`` bootstraps, so the overall row is that command's
figure (same studies, same resamples with the same seed). A group's value is the statistic
on the group's studies; its 95% interval resamples within the group. The gap of a group is
its value minus the value on all other studies, with an interval from resampling both
sides independently. Conventions:

* Groups partition the studies: a study without a value for an attribute is in its
  ``unknown`` group. Age bins: <40, 40-59, 60-79, >=80 years.
* With only two groups (sex) the gap is the one between them.
* A gap is **flagged** when its point estimate exceeds the margin in absolute value
  (default 0.05; every metric here lies in [0, 1]); it is **significant** when its 95%
  interval excludes zero. A flag without significance is a gap the data cannot tell from
  chance. Per attribute, the best and worst group are compared the same way.
* Sensitivity, false-positive rate and hallucination rate pool the 13 findings (not "No
  Finding"): hallucination rate is the share of stated findings that are absent.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from radreport.data.datasets.base import ReportRecord
from radreport.data.labels import CHEXPERT_LABELS, CRITICAL_LABELS
from radreport.eval.audit import AuditData, normalised_entropy
from radreport.eval.labeler import report_vector
from radreport.eval.metrics import (
    CLINICAL_METRICS,
    Interval,
    Statistic,
    bootstrap_ci,
    clinical_scores,
    grounding_statistics,
    label_matrix,
)
from radreport.eval.safety_metrics import safety_statistics

AGE_BINS: tuple[tuple[str, int, int | None], ...] = (
    ("<40", 0, 40), ("40-59", 40, 60), ("60-79", 60, 80), (">=80", 80, None))
UNKNOWN = "unknown"
SAFETY_ROWS = ("Review-flag rate", "OOD flag rate")
LOWER_IS_BETTER = frozenset({"False-positive rate", "Hallucination rate", "Attention entropy",
                             "Review-flag rate", "OOD flag rate"})
FINDINGS = [i for i, name in enumerate(CHEXPERT_LABELS) if name != "No Finding"]
CRITICAL = [i for i, name in enumerate(CHEXPERT_LABELS) if name in CRITICAL_LABELS]


@dataclass(frozen=True)
class Demographics:
    sex: str | None = None  # "F" or "M"
    age: int | None = None  # years at the study
    race: str | None = None  # a coarse group, e.g. from ``mimic_iv.race_group``


def age_group(age: int | None) -> str:
    if age is None:
        return UNKNOWN
    return next(name for name, low, high in AGE_BINS if age >= low and (high is None
                                                                         or age < high))


def partition(demographics: Sequence[Demographics], keep_unknown: bool = False,
              ) -> dict[str, dict[str, np.ndarray]]:
    """attribute -> group -> study positions; attributes nobody has are left out unless
    ``keep_unknown`` (a real dataset's audit shows them as one 'unknown' group)."""
    values = {"sex": [d.sex or UNKNOWN for d in demographics],
              "age group": [age_group(d.age) for d in demographics],
              "race/ethnicity": [d.race or UNKNOWN for d in demographics]}
    order = {"age group": [name for name, _, _ in AGE_BINS]}
    out: dict[str, dict[str, np.ndarray]] = {}
    for attribute, labels in values.items():
        if all(v == UNKNOWN for v in labels) and not keep_unknown:
            continue
        names = [n for n in order.get(attribute, sorted(set(labels) - {UNKNOWN}))
                 if n in labels] + ([UNKNOWN] if UNKNOWN in labels else [])
        column = np.array(labels)
        out[attribute] = {name: np.flatnonzero(column == name) for name in names}
    return out


# --- statistics -----------------------------------------------------------------------------

def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else math.nan


def _pooled_rate(ref: np.ndarray, hyp: np.ndarray, cols: list[int], kind: str,
                 idx: np.ndarray) -> float:
    r, h = ref[idx][:, cols], hyp[idx][:, cols]
    tp, fp = float((r & h).sum()), float((~r & h).sum())
    fn, tn = float((r & ~h).sum()), float((~r & ~h).sum())
    return {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "fpr": _ratio(fp, fp + tn), "hallucination": _ratio(fp, tp + fp)}[kind]


def _pooled(totals: np.ndarray, counts: np.ndarray, idx: np.ndarray) -> float:
    return _ratio(float(totals[idx].sum()), float(counts[idx].sum()))


def entropy_totals(data: AuditData) -> tuple[np.ndarray, np.ndarray]:
    """Per study: summed normalised entropy and count of its grounded (TP) sentences."""
    grounding = data.run.grounding or [[] for _ in data.cases]
    totals = np.array([sum(normalised_entropy(h) for h, _ in g) for g in grounding])
    return totals, np.array([len(g) for g in grounding], dtype=float)


def fairness_statistics(data: AuditData) -> dict[str, Statistic]:
    """The audited metrics, built from the functions ``radreport evaluate`` scores with."""
    cases, run = data.cases, data.run
    ref = np.array([c.labels for c in cases]) != 0
    hyp = label_matrix([report_vector(text) for text in run.hypotheses]).astype(bool)
    clinical = clinical_scores(ref.astype(np.int8), hyp.astype(np.int8))
    stats: dict[str, Statistic] = {k: clinical[k] for k in CLINICAL_METRICS}
    stats["Critical specificity"] = functools.partial(_pooled_rate, ref, hyp, CRITICAL,
                                                      "specificity")
    for name, kind in (("Sensitivity", "sensitivity"), ("False-positive rate", "fpr"),
                       ("Hallucination rate", "hallucination")):
        stats[name] = functools.partial(_pooled_rate, ref, hyp, FINDINGS, kind)
    if run.grounding is not None:
        stats |= grounding_statistics(run.grounding)
        stats["Attention entropy"] = functools.partial(_pooled, *entropy_totals(data))
    safety = safety_statistics(run.drafts, cases)
    stats |= {k: safety[k] for k in SAFETY_ROWS if k in safety}
    if any(d.safety is None or d.safety.ood_threshold is None for d in run.drafts):
        stats.pop("OOD flag rate", None)  # no OOD gate: "none flagged" measures nothing
    return stats


# --- groups and gaps ------------------------------------------------------------------------

@dataclass
class Gap:
    attribute: str
    metric: str
    group: str  # the group, or "best - worst" for a spread
    versus: str  # "rest", or the worst group's name
    gap: Interval
    flagged: bool
    significant: bool


@dataclass
class Fairness:
    studies: int
    resamples: int
    margin: float
    overall: dict[str, Interval]
    sizes: dict[str, dict[str, int]]
    groups: dict[str, dict[str, dict[str, Interval]]]  # attribute -> group -> metric
    gaps: list[Gap] = field(default_factory=list)
    spreads: list[Gap] = field(default_factory=list)

    @property
    def flagged(self) -> list[Gap]:
        """Flagged gaps, those whose interval excludes zero first."""
        return sorted((g for g in [*self.gaps, *self.spreads] if g.flagged),
                      key=lambda g: not g.significant)


def within(stat: Statistic, members: np.ndarray, idx: np.ndarray) -> float:
    """``stat`` on a resample ``idx`` of positions within ``members``."""
    return stat(members[idx])


def gap_interval(stat: Statistic, group: np.ndarray, rest: np.ndarray, resamples: int,
                 seed: int = 0, alpha: float = 0.05) -> Interval:
    """stat(group) - stat(rest), with a percentile interval from resampling each side."""
    point = stat(group) - stat(rest)
    rng = np.random.default_rng(seed)
    values = np.array([stat(group[rng.integers(0, len(group), len(group))])
                       - stat(rest[rng.integers(0, len(rest), len(rest))])
                       for _ in range(resamples)])
    if np.isnan(values).all():
        return point, math.nan, math.nan
    low, high = np.nanpercentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(low), float(high)


def _gap(attribute: str, metric: str, group: str, versus: str, gap: Interval,
         margin: float) -> Gap:
    point, low, high = gap
    flagged = not math.isnan(point) and abs(point) > margin
    significant = not math.isnan(low) and (low > 0 or high < 0)
    return Gap(attribute, metric, group, versus, gap, flagged, significant)


def audit(stats: Mapping[str, Statistic], groups: Mapping[str, Mapping[str, np.ndarray]],
          n: int, resamples: int = 1000, margin: float = 0.05, seed: int = 0) -> Fairness:
    """Overall, per-group and gap intervals of every statistic (see the module docstring)."""
    everyone = np.arange(n)
    result = Fairness(n, resamples, margin,
                      {m: bootstrap_ci(s, n, resamples, seed) for m, s in stats.items()},
                      {a: {g: len(ix) for g, ix in gs.items()} for a, gs in groups.items()},
                      {})
    for attribute, members in groups.items():
        table = result.groups.setdefault(attribute, {})
        for group, ix in members.items():
            table[group] = {m: bootstrap_ci(functools.partial(within, s, ix), len(ix),
                                            resamples, seed) for m, s in stats.items()}
            rest = np.setdiff1d(everyone, ix)
            if len(members) < 3 or not len(ix):
                continue  # with two groups, "vs rest" is the best-worst spread
            for metric, stat in stats.items():
                result.gaps.append(_gap(attribute, metric, group, "rest",
                                        gap_interval(stat, ix, rest, resamples, seed), margin))
        result.spreads += _spreads(attribute, members, stats, table, resamples, margin, seed)
    return result


def _spreads(attribute: str, members: Mapping[str, np.ndarray],
             stats: Mapping[str, Statistic], table: Mapping[str, Mapping[str, Interval]],
             resamples: int, margin: float, seed: int) -> list[Gap]:
    """Best minus worst known group per metric ("best" by the metric's direction)."""
    out = []
    for metric, stat in stats.items():
        known = [(table[g][metric][0], g) for g in members
                 if g != UNKNOWN and not math.isnan(table[g][metric][0])]
        if len(known) < 2:
            continue
        pick = (min, max) if metric in LOWER_IS_BETTER else (max, min)
        best, worst = pick[0](known)[1], pick[1](known)[1]
        gap = gap_interval(stat, members[best], members[worst], resamples, seed)
        out.append(_gap(attribute, metric, best, worst, gap, margin))
    return out


def phantom_demographics(data: AuditData) -> list[Demographics]:
    """Sex and age of the phantom studies (the generator records no race/ethnicity)."""
    return [Demographics(c.context.sex, c.context.age_years) for c in data.cases]


def record_demographics(records: Sequence[ReportRecord]) -> list[Demographics]:
    """Sex, age and race of dataset records (MIMIC-CXR: after ``mimic_iv.with_demographics``)."""
    return [Demographics(r.sex, r.age, r.extra.get("race")) for r in records]
