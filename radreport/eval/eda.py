"""``radreport eda``: what a dataset holds before anyone trains on it (seed 000 §3.2).

For any dataset ``open_dataset`` reads: studies and patients per split, the report-length
distribution (words of FINDINGS plus IMPRESSION), the most frequent terms, how often each
CheXpert finding is stated present or uncertain, and report length against the number of
findings present. Writes ``eda.json``, ``eda.md`` and four PNG plots; prints the summary.
Datasets without report text (CheXpert) or without labels (IU X-ray) say so instead.
"""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from radreport.data.datasets.base import ReportRecord
from radreport.data.labels import CHEXPERT_LABELS

WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")
# Function words that would top every term list; clinical words are kept.
STOPWORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "been", "by", "for", "from", "has", "have", "in",
    "is", "it", "its", "no", "not", "of", "on", "or", "seen", "the", "there", "this", "to",
    "was", "were", "with", "which", "than", "without"})
TOP_TERMS = 30


@dataclass
class Eda:
    dataset: str
    records: int = 0
    patients: int = 0
    per_split: dict[str, int] = field(default_factory=dict)
    with_text: int = 0
    with_labels: int = 0
    length_words: dict[str, float] = field(default_factory=dict)  # min, median, mean, max
    lengths: list[int] = field(default_factory=list)
    top_terms: list[tuple[str, int]] = field(default_factory=list)
    present: dict[str, int] = field(default_factory=dict)  # finding -> records stating it
    uncertain: dict[str, int] = field(default_factory=dict)
    length_by_findings: dict[int, float] = field(default_factory=dict)  # mean words
    sex: dict[str, int] = field(default_factory=dict)


def words(record: ReportRecord) -> list[str]:
    return WORD.findall(f"{record.findings} {record.impression}".lower())


def describe(dataset: str, records: Iterable[ReportRecord]) -> Eda:
    eda = Eda(dataset)
    patients: set[str] = set()
    terms: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    sexes: Counter[str] = Counter()
    present: Counter[str] = Counter()
    uncertain: Counter[str] = Counter()
    by_count: dict[int, list[int]] = {}
    for record in records:
        eda.records += 1
        patients.add(record.patient_id)
        splits[record.split] += 1
        sexes[record.sex or "unknown"] += 1
        found = [name for name, value in record.labels.items()
                 if value == 1 and name != "No Finding"]
        present.update(name for name, value in record.labels.items() if value == 1)
        uncertain.update(name for name, value in record.labels.items() if value == -1)
        eda.with_labels += bool(record.labels)
        text = words(record)
        if text:
            eda.with_text += 1
            eda.lengths.append(len(text))
            terms.update(w for w in text if w not in STOPWORDS)
            if record.labels:
                by_count.setdefault(len(found), []).append(len(text))
    eda.patients = len(patients)
    eda.per_split, eda.sex = dict(sorted(splits.items())), dict(sorted(sexes.items()))
    eda.present = {name: present[name] for name in CHEXPERT_LABELS}
    eda.uncertain = {name: uncertain[name] for name in CHEXPERT_LABELS}
    eda.top_terms = terms.most_common(TOP_TERMS)
    eda.length_by_findings = {n: statistics.fmean(v) for n, v in sorted(by_count.items())}
    if eda.lengths:
        eda.length_words = {"min": min(eda.lengths), "median": statistics.median(eda.lengths),
                            "mean": round(statistics.fmean(eda.lengths), 1),
                            "max": max(eda.lengths)}
    return eda


def plot(eda: Eda, out: Path) -> list[Path]:
    """The four plots; those without data (no text, no labels) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(name: str) -> None:
        path = out / name
        plt.tight_layout()
        plt.savefig(path, dpi=100)
        plt.close()
        written.append(path)

    if eda.lengths:
        plt.figure(figsize=(6, 3.5))
        plt.hist(eda.lengths, bins=min(40, max(5, len(set(eda.lengths)))))
        plt.xlabel("words (findings + impression)")
        plt.ylabel("reports")
        save("report_length.png")
        plt.figure(figsize=(6, 6))
        terms, counts = zip(*eda.top_terms, strict=True)
        plt.barh(list(reversed(terms)), list(reversed(counts)))
        plt.xlabel("occurrences")
        save("top_terms.png")
    if eda.with_labels:
        plt.figure(figsize=(6, 4.5))
        names = list(CHEXPERT_LABELS)
        plt.barh(names, [eda.present[n] for n in names], label="present")
        plt.barh(names, [eda.uncertain[n] for n in names], left=[eda.present[n] for n in names],
                 label="uncertain")
        plt.xlabel("records")
        plt.legend()
        save("finding_frequencies.png")
    if eda.length_by_findings:
        plt.figure(figsize=(5, 3.5))
        plt.plot(list(eda.length_by_findings), list(eda.length_by_findings.values()), "o-")
        plt.xlabel("findings present")
        plt.ylabel("mean words")
        save("length_vs_findings.png")
    return written


def markdown(eda: Eda, plots: list[Path]) -> str:
    lines = [f"# {eda.dataset}: exploratory statistics", "",
             f"{eda.records} records of {eda.patients} patients; per split "
             + ", ".join(f"{k} {v}" for k, v in eda.per_split.items())
             + f"; sex {', '.join(f'{k} {v}' for k, v in eda.sex.items())}.", ""]
    if eda.lengths:
        w = eda.length_words
        lines += [f"Report length in words: min {w['min']}, median {w['median']}, "
                  f"mean {w['mean']}, max {w['max']} ({eda.with_text} reports with text).", "",
                  "Top terms: " + ", ".join(f"{t} ({n})" for t, n in eda.top_terms[:15]), ""]
    else:
        lines += ["No report text in this dataset.", ""]
    if eda.with_labels:
        lines += ["| finding | present | uncertain |", "| --- | --- | --- |"]
        lines += [f"| {n} | {eda.present[n]} | {eda.uncertain[n]} |" for n in CHEXPERT_LABELS]
        lines += ["", "Mean words by findings present: " + ", ".join(
            f"{n}: {v:.1f}" for n, v in eda.length_by_findings.items()), ""]
    else:
        lines += ["No CheXpert labels in this dataset.", ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write(eda: Eda, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    plots = plot(eda, out)
    summary = {k: v for k, v in asdict(eda).items() if k != "lengths"}
    (out / "eda.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "eda.md").write_text(markdown(eda, plots))
    return [out / "eda.json", out / "eda.md", *plots]
