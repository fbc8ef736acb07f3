"""``radreport evaluate``: every system of the model card on the benchmark test split.

Systems are model folders run through ``ReportGenerator`` (the code that serves reports,
greedy decoding over ONNX), plus baseline (a), template filling from the first model's
label head. Test studies are rendered from their seeds at the benchmark resolution; only
what scoring needs is kept (image, reference text, labels, positive sentences' regions).

Grounding is scored per generated sentence that states a finding the study really has:
the sentence is paired with the reference sentence stating the same finding(s) (largest
label overlap, same section first), and its map is compared with that sentence's region.
Pertinent negatives are not scored (their "region" is an organ, where nothing is seen),
nor are invented findings (clinical F1 already counts them as false positives).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radreport.data.benchmark import BENCHMARK_SIZE_PX, benchmark_split
from radreport.data.labels import CHEXPERT_LABELS, POSITIVE, with_parents
from radreport.data.phantoms.generator import generate_study
from radreport.eval.baselines import template_report
from radreport.eval.labeler import label_sentence, named_devices
from radreport.eval.metrics import GroundedSentence, Interval, evaluate_reports
from radreport.eval.safety_metrics import safety_statistics
from radreport.model.data import area_downsample
from radreport.model.prompt import ClinicalContext
from radreport.model.report import (
    MODEL_INFO_FILE,
    DraftReport,
    ModelInfo,
    ReportGenerator,
    Variant,
)

ANATOMY_SIZE = 128  # anatomy regions are whole organs: 128 px is plenty to score them
ANATOMY_REGIONS: tuple[str, ...] = ("lungs", "heart", "mediastinum", "chest")


@dataclass
class ReferenceSentence:
    section: str
    labels: frozenset[str]  # positive CheXpert labels it states, parents closed
    mask: np.ndarray  # bool (H, W)
    text: str = ""


@dataclass
class TestCase:
    study_id: str
    image: np.ndarray  # float32 (H, W) in [0, 1]
    report: str
    labels: list[int]  # 14 ground-truth values, CHEXPERT_LABELS order
    positives: list[ReferenceSentence] = field(default_factory=list)
    context: ClinicalContext = field(default_factory=ClinicalContext)
    anatomy: dict[str, np.ndarray] = field(default_factory=dict)  # bool, ANATOMY_SIZE px


def render_case(seed: int, size: int = BENCHMARK_SIZE_PX) -> TestCase:
    study = generate_study(seed, size)
    positives = [
        ReferenceSentence(s.section, frozenset(with_parents(
            {k for k, v in s.mentions.items() if v == POSITIVE})), s.mask, s.text)
        for s in study.sentences if s.is_positive
    ]
    context = ClinicalContext(study.clinical_indication, study.patient.age_years,
                              study.patient.sex)
    anatomy = {name: area_downsample(study.anatomy[name], ANATOMY_SIZE).numpy() >= 0.5
               for name in ANATOMY_REGIONS}
    return TestCase(study.study_id, study.image, study.report_text,
                    [int(study.labels[name] == POSITIVE) for name in CHEXPERT_LABELS],
                    positives, context, anatomy)


def render_cases(seeds: Sequence[int], workers: int = 1) -> list[TestCase]:
    if workers <= 1:
        return [render_case(seed) for seed in seeds]
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(render_case, seeds, chunksize=16))


def split_seeds(split: str = "test", limit: int | None = None) -> range:
    seeds = benchmark_split(split).seeds
    return seeds if limit is None else seeds[:limit]


def stated_findings(text: str) -> frozenset[str]:
    """Positive or uncertain labels a sentence states, parents closed (no "No Finding")."""
    labels = {k for k, v in label_sentence(text).items() if v != 0 and k != "No Finding"}
    return frozenset(with_parents(labels))


def best_reference(text: str, section: str, case: TestCase) -> ReferenceSentence | None:
    """The reference sentence stating most nearly the same findings as a generated one;
    on ties, one naming the same kinds of device (a central line sentence is not scored on
    the endotracheal tube), then one in the same section. None if the sentence states no
    finding the study has."""
    stated = stated_findings(text)
    if not stated:
        return None
    devices = named_devices(text)
    best = max(case.positives, default=None, key=lambda ref: (
        len(stated & ref.labels) / len(stated | ref.labels),
        named_devices(ref.text) == devices, ref.section == section))
    return best if best is not None and stated & best.labels else None


def finding_region(text: str, section: str, case: TestCase) -> np.ndarray | None:
    """The true region of a generated sentence about a finding the study has."""
    best = best_reference(text, section, case)
    return None if best is None else best.mask


def pair_sentences(draft: DraftReport, case: TestCase) -> list[GroundedSentence]:
    """(heatmap, true region) for each generated sentence about a finding the study has."""
    pairs: list[GroundedSentence] = []
    for sentence in draft.sentences:
        mask = finding_region(sentence.text, sentence.section, case)
        if mask is not None:
            pairs.append((sentence.heatmap, mask))
    return pairs


@dataclass
class SystemRun:
    name: str
    hypotheses: list[str]
    grounding: list[list[GroundedSentence]] | None
    seconds: float
    drafts: list[DraftReport] = field(default_factory=list)


def run_model(name: str, model_dir: Path, cases: Sequence[TestCase], variant: Variant = "fp32",
              batch_size: int = 32, with_context: bool = False) -> SystemRun:
    """Drafts of every case; ``with_context`` sends each study's indication, age and sex."""
    generator = ReportGenerator(model_dir, variant)
    start = time.perf_counter()
    drafts: list[DraftReport] = []
    for i in range(0, len(cases), batch_size):
        chunk = cases[i : i + batch_size]
        contexts = [c.context for c in chunk] if with_context else None
        drafts += generator.generate([c.image for c in chunk], contexts=contexts)
    seconds = time.perf_counter() - start
    grounding = [pair_sentences(d, c) for d, c in zip(drafts, cases, strict=True)]
    return SystemRun(name, [d.text for d in drafts], grounding, seconds, drafts)


def reads_context(model_dir: Path) -> bool:
    """Whether a model folder's decoder takes the clinical context (a v2 prompt)."""
    info = ModelInfo.load(Path(model_dir) / MODEL_INFO_FILE)
    return int(info.extra.get("model_config", {}).get("prompt_len", 0)) > 0


def template_system(source: SystemRun, threshold: float = 0.5) -> SystemRun:
    """Baseline (a) from ``source``'s label head: its calibrated decisions where the model
    has them (the ones its own text follows), else its probabilities at ``threshold``."""
    hypotheses = []
    for d in source.drafts:
        if d.safety is not None and d.safety.ood_threshold is not None:
            present = set(d.safety.findings_present)
            probs = {k: float(k in present) for k in d.label_probs}
            hypotheses.append(template_report(probs, 0.5))
        else:
            hypotheses.append(template_report(d.label_probs, threshold))
    return SystemRun("(a) template from label head", hypotheses, None, 0.0)


@dataclass
class Evaluation:
    rows: dict[str, dict[str, Interval]]
    grounded_sentences: dict[str, int]
    seconds: dict[str, float]
    studies: int


def score(runs: Sequence[SystemRun], cases: Sequence[TestCase], resamples: int = 1000,
          seed: int = 0, baseline: dict[str, np.ndarray] | None = None) -> Evaluation:
    """Every row for every system on the same bootstrap resamples; ``baseline`` holds the
    mean training mask per organ for the negative/anatomical grounding baseline."""
    references = [c.report for c in cases]
    labels = np.array([c.labels for c in cases])
    rows = {run.name: evaluate_reports(references, run.hypotheses, labels,
                                       grounding=run.grounding, resamples=resamples, seed=seed,
                                       extra=safety_statistics(run.drafts, cases, baseline)
                                       if run.drafts else None)
            for run in runs}
    counts = {run.name: sum(len(g) for g in run.grounding) for run in runs if run.grounding}
    return Evaluation(rows, counts, {run.name: run.seconds for run in runs}, len(cases))
