"""``radreport fit-grounding``: fit the sentence-map tunings of a v2 model on validate.

Each validate study is drafted through ONNX Runtime as served, with the decoder's maps
left as they are; every sentence that the evaluation would score is kept with its true
region: a finding sentence with the region of the reference sentence it matches, a
negative or anatomical one with its organ. For each kind of sentence (``sentence_kind``)
the query weight and gamma that maximise mean grounding IoU plus pointing-game hits are
chosen from a small grid. Finding labels with fewer than ``min_sentences`` share one
tuning, fitted on all finding sentences; rarer organ kinds keep the decoder's map. The
test split is never read. Regions are scored at ``FIT_SIZE`` px, max-pooled so that thin
ones (a line, a band of atelectasis) survive.

Sides: each lateralised finding sentence with a sided reference gives the share of its
label's query map left of the midline; per label, the cutoff that reads the side most
accurately is kept if it beats the side the text states on the same sentences.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from radreport.data.benchmark import benchmark_split
from radreport.eval.evaluate import TestCase, best_reference, render_cases
from radreport.eval.metrics import grounding_iou, pointing_hit
from radreport.eval.safety_metrics import LATERAL_LABELS, anatomy_region
from radreport.model.query_grounding import (
    DEFAULT_KIND,
    GROUNDING_FILE,
    MapTuning,
    SentenceGrounder,
    blend,
    kind_query_map,
    left_share,
    map_grid,
    on_grid,
    sentence_kind,
    side_from_share,
    side_of,
)
from radreport.model.report import ReportGenerator, to_model_input

QUERY_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
GAMMAS = (0.3, 0.4, 0.5, 0.7, 1.0, 1.4)
SIDE_CUTOFFS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
FIT_SIZE = 128


@dataclass
class GroundingSample:
    kind: str
    decoder_map: np.ndarray  # (grid, grid)
    query_map: np.ndarray | None  # (grid, grid), the kind's query rows averaged
    region: np.ndarray  # bool, at most FIT_SIZE px


@dataclass
class SideSample:
    label: str
    left_share: float  # of the label's query map
    truth: str  # the side the reference sentence states
    stated: str | None  # the side the generated sentence states


@dataclass
class Samples:
    maps: list[GroundingSample] = field(default_factory=list)
    sides: list[SideSample] = field(default_factory=list)


def pooled_region(mask: np.ndarray, size: int = FIT_SIZE) -> np.ndarray:
    """A boolean mask max-pooled down to at most ``size`` px (whole blocks only)."""
    mask = np.asarray(mask, dtype=bool)
    factor = max(1, mask.shape[0] // size)
    h, w = (mask.shape[0] // factor) * factor, (mask.shape[1] // factor) * factor
    blocks = mask[:h, :w].reshape(h // factor, factor, w // factor, factor)
    return np.asarray(blocks.any(axis=(1, 3)))


def collect_samples(generator: ReportGenerator, cases: Sequence[TestCase],
                    batch_size: int = 16) -> Samples:
    """The scored sentences of ``cases`` with the decoder's own maps and the query maps,
    and the sides of lateralised ones (``generator`` made with ``grounding=False``)."""
    size = generator.info.image_size
    samples = Samples()
    for start in range(0, len(cases), batch_size):
        chunk = cases[start : start + batch_size]
        drafts = generator.generate([c.image for c in chunk])
        batch = np.stack([to_model_input(c.image, size)[0] for c in chunk])[:, None]
        encoded = generator.onnx.encode(batch)
        query_maps, grounding_maps = encoded.query_maps, encoded.grounding_maps
        for i, (case, draft) in enumerate(zip(chunk, drafts, strict=True)):
            maps = None if query_maps is None else query_maps[i]
            grounding = None if grounding_maps is None else grounding_maps[i]
            for sentence in draft.sentences:
                _collect(generator.info.labels, sentence.text, sentence.section,
                         sentence.heatmap, maps, grounding, case, samples)
    return samples


def _collect(labels: Sequence[str], text: str, section: str, heatmap: np.ndarray,
             maps: np.ndarray | None, grounding: np.ndarray | None, case: TestCase,
             samples: Samples) -> None:
    """``maps``: the coarse query maps (sides); ``grounding``: those sentences are blended
    with (the fine head's, the decoder map brought to their grid, where a model has one)."""
    kind = sentence_kind(text, labels)
    reference = best_reference(text, section, case)
    if reference is not None:
        mask: np.ndarray | None = reference.mask
        truth = side_of(reference.text)
        label = kind.name.removeprefix("finding:")
        if maps is not None and truth is not None and label in LATERAL_LABELS:
            share = left_share(maps, [labels.index(label)], len(labels))
            samples.sides.append(SideSample(label, share, truth, side_of(text)))
    else:
        organ = anatomy_region(text)
        mask = case.anatomy.get(organ) if organ is not None else None
    if mask is not None:
        decoder = heatmap if grounding is None else on_grid(heatmap, map_grid(grounding))
        samples.maps.append(GroundingSample(kind.name, decoder,
                                            kind_query_map(kind, grounding, decoder.shape),
                                            pooled_region(mask)))


@dataclass(frozen=True)
class SideFit:
    cutoff: float
    text_accuracy: float  # of the side the generated sentences state
    read_accuracy: float  # of the side read from the query map at ``cutoff``


def fit_side_cutoffs(samples: Sequence[SideSample], min_sentences: int = 20,
                     ) -> dict[str, SideFit]:
    """Per label, the cutoff whose read side beats the text's on validate, if one does."""
    fits: dict[str, SideFit] = {}
    for label in sorted({s.label for s in samples}):
        group = [s for s in samples if s.label == label]
        if len(group) < min_sentences:
            continue
        text = float(np.mean([s.stated == s.truth for s in group]))
        scored = [(float(np.mean([side_from_share(s.left_share, c) == s.truth for s in group])),
                   c) for c in SIDE_CUTOFFS]
        accuracy, cutoff = max(scored)  # ties: the larger cutoff (a wider bilateral band)
        if accuracy > text:
            fits[label] = SideFit(cutoff, text, accuracy)
    return fits


def _score(samples: Sequence[GroundingSample], tuning: MapTuning) -> float:
    total = 0.0
    for s in samples:
        heatmap = blend(s.decoder_map, s.query_map, tuning)
        total += grounding_iou(heatmap, s.region) + pointing_hit(heatmap, s.region)
    return total / max(1, len(samples))


def best_tuning(samples: Sequence[GroundingSample]) -> tuple[MapTuning, float]:
    """The grid point with the highest mean IoU + pointing over ``samples``."""
    has_query = all(s.query_map is not None for s in samples)
    weights = QUERY_WEIGHTS if has_query else (0.0,)
    scored = [(_score(samples, MapTuning(w, g)), MapTuning(w, g))
              for w, g in itertools.product(weights, GAMMAS)]
    score, tuning = max(scored, key=lambda item: item[0])
    return tuning, score


def fit_tunings(samples: Sequence[GroundingSample], min_sentences: int = 20,
                ) -> dict[str, MapTuning]:
    by_kind: dict[str, list[GroundingSample]] = defaultdict(list)
    for sample in samples:
        by_kind[sample.kind].append(sample)
    findings = [s for s in samples if s.kind.startswith("finding:")]
    tunings: dict[str, MapTuning] = {}
    if len(findings) >= min_sentences:
        tunings[DEFAULT_KIND] = best_tuning(findings)[0]
    for kind, group in sorted(by_kind.items()):
        if len(group) >= min_sentences:
            tunings[kind] = best_tuning(group)[0]
    return tunings


@dataclass
class GroundingFit:
    grounder: SentenceGrounder
    sentences: dict[str, int]  # validate sentences per kind
    sides: dict[str, SideFit]  # labels whose side is read from the query maps
    path: Path


def fit_grounding(model_dir: str | Path, validate_count: int = 500, workers: int = 1,
                  min_sentences: int = 20) -> GroundingFit:
    """Fit and write ``grounding.json`` into ``model_dir``; see the module docstring."""
    folder = Path(model_dir)
    generator = ReportGenerator(folder, grounding=False)
    seeds = benchmark_split("validate").seeds[:validate_count]
    samples = collect_samples(generator, render_cases(seeds, workers))
    tunings = fit_tunings(samples.maps, min_sentences)
    sides = fit_side_cutoffs(samples.sides, min_sentences)
    grounder = SentenceGrounder(generator.info.labels, tunings,
                                f"validate split, first {len(seeds)} studies",
                                {label: fit.cutoff for label, fit in sides.items()})
    path = folder / GROUNDING_FILE
    grounder.save(path)
    counts: dict[str, int] = defaultdict(int)
    for sample in samples.maps:
        counts[sample.kind] += 1
    return GroundingFit(grounder, dict(counts), sides, path)
