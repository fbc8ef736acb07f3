"""``radreport gate``: the release gate. A candidate model folder is evaluated on a held-out
split with the code of ``radreport evaluate`` (served ONNX, greedy, no clinical context, the
same rows and bootstrap), each row named in a thresholds file is checked against its bound,
and ``gate.json`` and ``gate.md`` are written. Any failing row fails the gate.

Judged on point estimates, as issue 15's goals are; the 95% interval is reported beside each.
A row the data cannot measure (no region masks on a real dataset without MS-CXR's boxes, no
OOD gate in the folder, an undefined value) is "not measurable", and the thresholds file says
whether that fails (``not_measurable = "fail"``, the default) or is let through (``"pass"``).

Rows beyond ``radreport evaluate``'s: the anatomical grounding IoU's margin over the mean-mask
baseline, OOD AUROC per committed transform and the worst of them (the first ``ood_limit``
test images, bootstrapped over images), and the largest precision variant's ONNX + tokenizer
size in MB (exact, no interval).
"""

from __future__ import annotations

import functools
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from radreport.eval.evaluate import SystemRun, TestCase, render_cases, run_model, split_seeds
from radreport.eval.metrics import NLG_METRICS, Interval, Statistic, bootstrap_ci, evaluate_reports
from radreport.eval.safety_metrics import mean_anatomy_masks, safety_statistics
from radreport.model.report import TOKENIZER_FILE, VARIANTS, model_files

THRESHOLDS_DIR = Path(__file__).parent / "thresholds"
PHANTOM_THRESHOLDS = THRESHOLDS_DIR / "phantom-v2.toml"
ANATOMY_MARGIN = "Grounding IoU (negative/anatomical) above mean-mask baseline"
OOD_WORST = "OOD AUROC (worst transform)"
MODEL_SIZE = "Model size, largest variant (MB)"
Status = Literal["pass", "fail", "not measurable"]


@dataclass(frozen=True)
class Threshold:
    metric: str  # a row name of the evaluation (``radreport evaluate``'s table, or above)
    bound: float
    kind: Literal["min", "max"]
    source: str = ""  # where the number comes from
    not_measurable: Literal["fail", "pass"] = "fail"

    def describe(self) -> str:
        return f"{'≥' if self.kind == 'min' else '≤'} {self.bound:g}"


@dataclass(frozen=True)
class Thresholds:
    name: str
    description: str
    rows: tuple[Threshold, ...]


def load_thresholds(path: Path) -> Thresholds:
    """A thresholds TOML file: ``[[threshold]]`` tables with ``metric`` and ``min`` or ``max``."""
    with Path(path).open("rb") as f:
        raw = tomllib.load(f)
    default = raw.get("not_measurable", "fail")
    rows = []
    for item in raw.get("threshold", []):
        bounds: list[Literal["min", "max"]] = [k for k in ("min", "max") if k in item]
        if len(bounds) != 1 or "metric" not in item:
            raise ValueError(f"{path}: each threshold needs a metric and one of min/max: {item}")
        missing = item.get("not_measurable", default)
        if missing not in ("fail", "pass"):
            raise ValueError(f"{path}: not_measurable must be 'fail' or 'pass', got {missing!r}")
        rows.append(Threshold(str(item["metric"]), float(item[bounds[0]]), bounds[0],
                              str(item.get("source", "")), missing))
    names = [r.metric for r in rows]
    if not rows or len(set(names)) != len(names):
        raise ValueError(f"{path}: needs at least one threshold, each metric once")
    return Thresholds(str(raw.get("name", Path(path).stem)), str(raw.get("description", "")),
                      tuple(rows))


@dataclass(frozen=True)
class GateRow:
    metric: str
    value: float | None
    low: float | None
    high: float | None
    threshold: str
    status: Status
    source: str


@dataclass(frozen=True)
class GateResult:
    thresholds: str
    model: str
    dataset: str
    split: str
    studies: int
    resamples: int
    rows: tuple[GateRow, ...]
    measured: dict[str, Interval]  # every row the evaluation produced
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(row.status == "pass" for row in self.rows)

    @property
    def failures(self) -> list[str]:
        return [row.metric for row in self.rows if row.status != "pass"]


def check(thresholds: Thresholds, measured: Mapping[str, Interval]) -> tuple[GateRow, ...]:
    """Each threshold against its row's point estimate; missing or NaN is not measurable."""
    rows = []
    for t in thresholds.rows:
        interval = measured.get(t.metric)
        if interval is None or math.isnan(interval[0]):
            status: Status = "pass" if t.not_measurable == "pass" else "not measurable"
            rows.append(GateRow(t.metric, None, None, None, t.describe(), status, t.source))
            continue
        point, low, high = interval
        ok = point >= t.bound if t.kind == "min" else point <= t.bound
        rows.append(GateRow(t.metric, point, _finite(low), _finite(high), t.describe(),
                            "pass" if ok else "fail", t.source))
    return tuple(rows)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


# --- measuring ------------------------------------------------------------------------------


def _difference(a: Statistic, b: Statistic, idx: np.ndarray) -> float:
    return a(idx) - b(idx)


def measure(run: SystemRun, cases: Sequence[TestCase], resamples: int, seed: int = 0,
            baseline: dict[str, np.ndarray] | None = None) -> dict[str, Interval]:
    """``radreport evaluate``'s rows for one system, plus the anatomical margin."""
    extra = safety_statistics(run.drafts, cases, baseline)
    anatomy, blind = (extra.get("Grounding IoU (negative/anatomical)"),
                      extra.get("Grounding IoU (anatomy, mean-mask baseline)"))
    if anatomy is not None and blind is not None:
        extra[ANATOMY_MARGIN] = functools.partial(_difference, anatomy, blind)
    rows = evaluate_reports([c.report for c in cases], run.hypotheses,
                            np.array([c.labels for c in cases]), grounding=run.grounding,
                            resamples=resamples, seed=seed, extra=extra)
    if not any(c.report.strip() for c in cases):  # labels only (CheXpert): no text to score
        rows = {k: v for k, v in rows.items() if k not in NLG_METRICS}
    if any(d.safety is None or d.safety.ood_threshold is None for d in run.drafts):
        rows.pop("OOD flag rate", None)  # no OOD gate: "none flagged" would be no measurement
    return rows


def _worst_auroc(inside: np.ndarray, outside: Sequence[np.ndarray], idx: np.ndarray) -> float:
    from radreport.eval.ood import auroc

    return min(auroc(inside[idx], out[idx]) for out in outside)


def ood_rows(model_dir: Path, images: Sequence[np.ndarray], resamples: int,
             seed: int = 0) -> dict[str, Interval]:
    """OOD AUROC per committed transform and the worst one, as ``radreport evaluate --ood``
    computes them, bootstrapped over images (an image and its transformed copy together).
    Empty when the folder has no OOD gate."""
    from radreport.eval.ood import OOD_TRANSFORMS, gate_scores
    from radreport.model.report import ReportGenerator

    generator = ReportGenerator(model_dir)
    if generator.safety_net.ood is None or len(images) < 2:
        return {}
    inside = gate_scores(generator, images)
    outside = {}
    for t in OOD_TRANSFORMS:
        rng = np.random.default_rng(seed)
        outside[t.name] = gate_scores(generator, [t.apply(image, rng) for image in images])
    stats: dict[str, Statistic] = {
        f"OOD AUROC {name}": functools.partial(_worst_auroc, inside, [scores])
        for name, scores in outside.items()}
    stats[OOD_WORST] = functools.partial(_worst_auroc, inside, list(outside.values()))
    return {k: bootstrap_ci(s, len(images), resamples, seed) for k, s in stats.items()}


def model_size_mb(model_dir: Path) -> float:
    """The largest precision variant's two ONNX graphs plus its tokenizer, in MB (10^6)."""
    sizes = []
    for variant in VARIANTS:
        graphs = model_files(model_dir, variant)
        if all(p.is_file() for p in graphs):
            files = [*graphs, Path(model_dir) / TOKENIZER_FILE]
            sizes.append(sum(p.stat().st_size for p in files if p.is_file()) / 1e6)
    return max(sizes, default=math.nan)


def load_cases(dataset: str, root: Path | None, split: str, limit: int | None, workers: int,
               baseline_studies: int = 200, ms_cxr: Path | None = None, mask_size: int = 256,
               ) -> tuple[list[TestCase], dict[str, np.ndarray] | None, list[str]]:
    """Held-out cases, the mean-mask baseline (phantoms only) and notes for the report;
    ``ms_cxr``: MS-CXR's CSV, whose boxes make grounding measurable on MIMIC-CXR-JPG (masks
    in the model's ``mask_size`` square)."""
    if dataset == "phantoms":
        if ms_cxr is not None:
            raise ValueError("MS-CXR's boxes are on MIMIC-CXR-JPG images, not phantoms")
        seeds = split_seeds(split, limit)
        baseline = mean_anatomy_masks(render_cases(split_seeds("train", baseline_studies),
                                                   workers))
        note = (f"phantoms: benchmark {split} split, seeds {seeds.start}..{seeds.stop - 1}; "
                f"mean-mask baseline from {baseline_studies} train studies")
        return render_cases(seeds, workers), baseline, [note]
    if root is None:
        raise ValueError(f"dataset {dataset!r} needs --root, the dataset's folder")
    from radreport.eval.dataset_cases import dataset_cases

    found = dataset_cases(dataset, root, split, limit, ms_cxr, mask_size)
    if not found.cases:
        raise ValueError(f"no readable frontal {split} studies in {root}")
    return found.cases, None, [found.note]


def run_gate(model_dir: Path, cases: Sequence[TestCase], thresholds: Thresholds, *,
             dataset: str, split: str, resamples: int = 1000, ood_limit: int = 200,
             baseline: dict[str, np.ndarray] | None = None,
             notes: Sequence[str] = ()) -> GateResult:
    """Evaluate ``model_dir`` on ``cases`` and check ``thresholds``."""
    run = run_model("candidate", Path(model_dir), cases)
    measured = measure(run, cases, resamples, baseline=baseline)
    measured |= ood_rows(Path(model_dir), [c.image for c in cases[:ood_limit]], resamples)
    size = model_size_mb(Path(model_dir))
    measured[MODEL_SIZE] = (size, size, size)
    return GateResult(thresholds.name, str(model_dir), dataset, split, len(cases), resamples,
                      check(thresholds, measured), measured, tuple(notes))


# --- reports --------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table_lines(result: GateResult) -> list[str]:
    """The gate's rows as a Markdown table (also what the CLI prints)."""
    lines = ["| metric | value [95% interval] | threshold | result |", "|---|---|---|---|"]
    for row in result.rows:
        interval = "" if row.low is None else f" [{_num(row.low)}, {_num(row.high)}]"
        lines.append(f"| {row.metric} | {_num(row.value)}{interval} | {row.threshold} | "
                     f"{row.status.upper() if row.status != 'not measurable' else row.status} |")
    return lines


def to_markdown(result: GateResult) -> str:
    verdict = "PASSED" if result.passed else f"FAILED ({len(result.failures)} rows)"
    head = [f"# Release gate: {verdict}", "",
            f"- model: `{result.model}`",
            f"- thresholds: {result.thresholds}",
            f"- data: {result.dataset}, {result.split} split, {result.studies} studies; point "
            f"estimates judged, 95% bootstrap intervals ({result.resamples} resamples)", ""]
    tail = ["", *(f"- {note}" for note in result.notes)]
    if result.failures:
        tail.append(f"- not passed: {', '.join(result.failures)}")
    return "\n".join([*head, *table_lines(result), *tail]) + "\n"


def to_json(result: GateResult) -> dict[str, object]:
    return {"passed": result.passed, "failures": result.failures,
            **{k: v for k, v in asdict(result).items() if k != "measured"},
            "measured": {k: [_finite(x) for x in v] for k, v in result.measured.items()}}


def write_reports(result: GateResult, out_dir: Path) -> tuple[Path, Path]:
    """``gate.json`` (every measured row too) and ``gate.md``; aggregates only, no study ids."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "gate.json", out_dir / "gate.md"
    json_path.write_text(json.dumps(to_json(result), indent=1, allow_nan=False) + "\n")
    md_path.write_text(to_markdown(result))
    return json_path, md_path
