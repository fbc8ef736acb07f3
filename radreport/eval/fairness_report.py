"""fairness.md, fairness.json and the plots of ``radreport audit fairness``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from radreport.eval.audit import AuditData
from radreport.eval.fairness import (
    AGE_BINS,
    LOWER_IS_BETTER,
    UNKNOWN,
    Demographics,
    Fairness,
    Gap,
    audit,
    fairness_statistics,
    partition,
    phantom_demographics,
)
from radreport.eval.metrics import Interval, Statistic

PLOTTED = ("Clinical F1 (micro)", "Critical sensitivity", "Hallucination rate",
           "Grounding IoU", "Pointing game", "Attention entropy", "Review-flag rate")


def _num(value: float, digits: int = 3) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _cell(value: Interval) -> str:
    return f"{_num(value[0])} [{_num(value[1])}, {_num(value[2])}]"


def _slug(attribute: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in attribute).strip("_")


def plot_groups(result: Fairness, out: Path) -> list[Path]:
    """Per attribute: each plotted metric by group, 95% intervals, overall as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    metrics = [m for m in PLOTTED if m in result.overall]
    for attribute, groups in result.groups.items():
        names = list(groups)
        fig, axes = plt.subplots(1, len(metrics), figsize=(2.3 * len(metrics), 3.2),
                                 squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            points = np.array([groups[g][metric] for g in names], dtype=float)
            err = np.abs(points[:, 1:].T - points[:, 0])
            ax.errorbar(range(len(names)), points[:, 0], yerr=np.nan_to_num(err), fmt="o",
                        capsize=3)
            ax.axhline(result.overall[metric][0], color="gray", lw=0.8, ls="--")
            ax.set_xticks(range(len(names)), names, rotation=45, fontsize=8)
            ax.set_title(metric, fontsize=8)
        fig.suptitle(f"by {attribute} (dashed: all studies; bars: 95% bootstrap)", fontsize=9)
        fig.tight_layout()
        path = out / f"fairness_{_slug(attribute)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_sentence_spread(values: Mapping[str, Mapping[str, Sequence[float]]],
                         out: Path) -> Path | None:
    """Box plots of per-sentence IoU and entropy by group (one row per attribute)."""
    if not values:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(values)
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 2.8 * len(rows)), squeeze=False)
    for ax, key in zip(axes[:, 0], rows, strict=True):
        groups = values[key]
        ax.boxplot([list(v) for v in groups.values()], showfliers=False)
        ax.set_xticks(range(1, len(groups) + 1), list(groups), fontsize=8)
        ax.set_title(key, fontsize=9)
    fig.tight_layout()
    path = out / "fairness_sentences.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _gap_line(g: Gap) -> str:
    worse = (g.gap[0] > 0) == (g.metric in LOWER_IS_BETTER)
    side = "worse" if worse else "better"
    return (f"- **{g.attribute} / {g.metric}**: {g.group} vs {g.versus} "
            f"{_cell(g.gap)} ({g.group} {side}; "
            f"{'interval excludes 0' if g.significant else 'interval includes 0'})")


def markdown(result: Fairness, title: str, notes: Sequence[str], plots: Sequence[Path]) -> str:
    metrics = list(result.overall)
    bins = ", ".join(name for name, _, _ in AGE_BINS)
    lines = [f"# {title}", "",
             f"{result.studies} studies; point estimate [95% bootstrap interval, "
             f"{result.resamples} resamples]. Age bins (years): {bins}; studies without a "
             f"value form the group '{UNKNOWN}'. A gap is a group's value minus that of all "
             f"other studies (and best minus worst group); it is flagged when it exceeds "
             f"{result.margin:g} in absolute value. Lower is better for: "
             f"{', '.join(sorted(LOWER_IS_BETTER))}. Best and worst groups are picked on "
             "their point estimates, so a best-worst interval is optimistic (not corrected "
             "for the choice). fairness.json holds every gap, flagged or not.", "", *notes, "",
             f"## Flagged gaps ({len(result.flagged)})", ""]
    lines += [_gap_line(g) for g in result.flagged] or ["None beyond the margin."]
    lines += ["", "## All studies", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {m} | {_cell(result.overall[m])} |" for m in metrics]
    for attribute, groups in result.groups.items():
        names = list(groups)
        sizes = result.sizes[attribute]
        lines += ["", f"## By {attribute}", "",
                  "| metric | " + " | ".join(f"{g} (n={sizes[g]})" for g in names) + " |",
                  "| --- |" + " --- |" * len(names)]
        lines += [f"| {m} | " + " | ".join(_cell(groups[g][m]) for g in names) + " |"
                  for m in metrics]
        lines += ["", "| metric | best - worst group | gap [95%] | flagged |",
                  "| --- | --- | --- | --- |"]
        lines += [f"| {s.metric} | {s.group} - {s.versus} | {_cell(s.gap)} | "
                  f"{'yes' if s.flagged else 'no'} |"
                  for s in result.spreads if s.attribute == attribute]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def to_json(result: Fairness, extra: Mapping[str, Any]) -> str:
    payload = {**extra, **asdict(result), "flagged": [asdict(g) for g in result.flagged]}
    return json.dumps(payload, indent=1, allow_nan=True) + "\n"


def write(result: Fairness, out: Path, title: str, notes: Sequence[str],
          sentence_values: Mapping[str, Mapping[str, Sequence[float]]] | None = None,
          extra: Mapping[str, Any] | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_groups(result, out)
    spread = plot_sentence_spread(sentence_values or {}, out)
    plots += [spread] if spread is not None else []
    (out / "fairness.md").write_text(markdown(result, title, notes, plots))
    (out / "fairness.json").write_text(to_json(result, extra or {}))
    return [out / "fairness.md", out / "fairness.json", *plots]


def sentence_values(data: AuditData, groups: Mapping[str, Mapping[str, np.ndarray]],
                    ) -> dict[str, dict[str, list[float]]]:
    """Per attribute: each group's per-sentence IoU and entropy of its TP sentences."""
    tp = [s for s in data.sentences if s.kind == "TP"]
    out: dict[str, dict[str, list[float]]] = {}
    if not tp:  # nothing grounded (a real dataset without region masks): no plot
        return out
    for attribute, members in groups.items():
        where = {int(i): g for g, ix in members.items() for i in ix}
        for label, value in (("IoU", "iou"), ("attention entropy", "entropy")):
            key = f"per-sentence {label} of true-positive sentences, by {attribute}"
            out[key] = {g: [float(getattr(s, value)) for s in tp if where[s.study] == g]
                        for g in members}
    return out


PHANTOM_NOTE = ("Phantom sex and age are drawn independently of the image and the findings "
                "(radreport.data.phantoms.generator), so on phantoms every true gap is zero: "
                "what is flagged here is sampling noise, a floor for reading real audits. "
                "Phantoms record no race/ethnicity, so it is not audited here.")


def measurable(stats: Mapping[str, Statistic], n: int) -> tuple[dict[str, Statistic], list[str]]:
    """The statistics defined on all ``n`` studies, and the names of those that are not
    (e.g. grounding on a real dataset without region masks), as the gate's "not measurable"."""
    everyone = np.arange(n)
    values = {name: stat(everyone) for name, stat in stats.items()}
    missing = [name for name, value in values.items() if math.isnan(value)]
    return {k: v for k, v in stats.items() if k not in missing}, missing


def audit_fairness(data: AuditData, out: Path, resamples: int = 1000, margin: float = 0.05,
                   demographics: Sequence[Demographics] | None = None,
                   notes: Sequence[str] = (), dataset: str = "phantoms") -> Fairness:
    """The whole command: statistics, groups, gaps, then the files. Without
    ``demographics`` the cases are phantoms and carry their own; with them (a real dataset)
    every attribute is shown, as one 'unknown' group when the dataset lacks it."""
    people = phantom_demographics(data) if demographics is None else list(demographics)
    groups = partition(people, keep_unknown=demographics is not None)
    stats, missing = measurable(fairness_statistics(data), len(data.cases))
    result = audit(stats, groups, len(data.cases), resamples, margin)
    lines = [PHANTOM_NOTE] if demographics is None else list(notes)
    if missing:
        lines.append(f"Not measurable on these studies (left out of every table): "
                     f"{', '.join(missing)}.")
    title = f"Fairness audit: {data.split} split" + ("" if dataset == "phantoms"
                                                      else f" of {dataset}")
    write(result, out, title, [f"- {line}" for line in lines], sentence_values(data, groups),
          {"dataset": dataset, "split": data.split, "system": data.run.name,
           "not_measurable": missing})
    return result
