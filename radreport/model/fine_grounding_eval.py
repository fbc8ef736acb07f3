"""Measure the fine grounding head on the validate split (never test), per finding.

Each validate study is drafted as served (ONNX Runtime, the folder's ``grounding.json``);
every sentence the evaluation scores (a finding the study has, paired with its reference
sentence by ``best_reference``) is kept with its maps:

- (a) served: the sentence map as served (decoder blended with the coarse query maps);
- (b) coarse: the mean coarse (24 x 24) query map of the labels the sentence states;
- (a'), (b'): (a) and (b) upsampled bilinearly to the fine grid, untrained baselines (an
  untrained head returns (b') up to normalisation): how much of a gain is resolution alone;
- (c) fine: the same mean of the fine head's (96 x 96) maps;
- (d) blend: ``(decoder up^(1-w) * fine^w)^gamma``, the decoder map upsampled bilinearly to
  the fine grid, with ``w`` and ``gamma`` fitted per kind of sentence on validate studies
  ``0..fit_count-1`` exactly as ``fit_grounding`` fits the served tunings.

Pointing and IoU are scored against the full-resolution reference region, as ``radreport
evaluate`` does; a sentence counts for each finding it states that its reference states
(as ``radreport audit errors`` counts). The table reports validate studies from
``fit_count`` on, where (d) was not fitted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from radreport.data.benchmark import benchmark_split
from radreport.data.labels import CHEXPERT_LABELS
from radreport.eval.evaluate import TestCase, best_reference, render_cases, stated_findings
from radreport.eval.metrics import grounding_iou, pointing_hit, upsample
from radreport.model.chexquery import CheXQueryEncoder
from radreport.model.fine_grounding import (
    FineGroundingHead,
    frozen_encoder,
    frozen_inputs,
    load_head,
)
from radreport.model.fit_grounding import GroundingSample, fit_tunings, pooled_region
from radreport.model.onnx_weights import recover_model
from radreport.model.query_grounding import (
    MapTuning,
    SentenceGrounder,
    blend,
    kind_query_map,
    sentence_kind,
)
from radreport.model.report import ReportGenerator, to_model_input

SYSTEMS = ("(a) served", "(a') served up x4", "(b) coarse query", "(b') coarse up x4",
           "(c) fine query", "(d) decoder+fine blend")


@dataclass(frozen=True)
class RecordingGrounder(SentenceGrounder):
    """The served grounder, keeping each (served map, decoder map) pair it produced."""

    seen: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    def refine(self, text: str, decoder_map: np.ndarray,
               query_maps: np.ndarray | None) -> np.ndarray:
        served = super().refine(text, decoder_map, query_maps)
        self.seen.append((served, decoder_map))
        return served

    def decoder_map(self, served: np.ndarray) -> np.ndarray:
        return next(d for s, d in self.seen if s is served)


@dataclass
class Scored:
    study: int  # position in the validate split
    kind: str
    findings: frozenset[str]  # stated and in the reference, parents closed
    served: np.ndarray
    decoder: np.ndarray
    coarse: np.ndarray
    fine: np.ndarray
    mask: np.ndarray  # bool, the reference region at full resolution


def fine_maps(encoder: CheXQueryEncoder, head: FineGroundingHead, images: np.ndarray,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs (B, 1, S, S) -> coarse (B, Q, N) and fine (B, Q, (S/4)^2) query maps."""
    with torch.no_grad():
        inputs = frozen_inputs(encoder, torch.from_numpy(images))
        return inputs.coarse.numpy(), head(inputs).numpy()


def collect(generator: ReportGenerator, encoder: CheXQueryEncoder, head: FineGroundingHead,
            cases: Sequence[TestCase], first: int) -> list[Scored]:
    recorder = generator.grounder
    assert isinstance(recorder, RecordingGrounder)
    recorder.seen.clear()
    labels = generator.info.labels
    size = generator.info.image_size
    drafts = generator.generate([c.image for c in cases])
    images = np.stack([to_model_input(c.image, size)[0] for c in cases])[:, None]
    coarse, fine = fine_maps(encoder, head, images)
    grid, fine_grid = round(coarse.shape[-1] ** 0.5), round(fine.shape[-1] ** 0.5)
    out = []
    for i, (case, draft) in enumerate(zip(cases, drafts, strict=True)):
        for sentence in draft.sentences:
            ref = best_reference(sentence.text, sentence.section, case)
            if ref is None:
                continue
            kind = sentence_kind(sentence.text, labels)
            c = kind_query_map(kind, coarse[i], (grid, grid))
            f = kind_query_map(kind, fine[i], (fine_grid, fine_grid))
            if c is None or f is None:
                continue  # states a finding the labeler files under no query (never seen)
            out.append(Scored(first + i, kind.name, stated_findings(sentence.text) & ref.labels,
                              sentence.heatmap, recorder.decoder_map(sentence.heatmap), c, f,
                              ref.mask))
    return out


def on_fine_grid(coarse_map: np.ndarray, s: Scored) -> np.ndarray:
    """A 24 x 24 map upsampled bilinearly to the fine grid (no training: the baseline)."""
    return upsample(coarse_map, (s.fine.shape[0], s.fine.shape[1])).astype(np.float32)


def upsampled_decoder(s: Scored) -> np.ndarray:
    return on_fine_grid(s.decoder, s)


def fit_blend(samples: Sequence[Scored]) -> dict[str, MapTuning]:
    """Per-kind (w, gamma) of decoder-up^(1-w) * fine^w, fitted as ``fit_grounding`` does."""
    return fit_tunings([GroundingSample(s.kind, upsampled_decoder(s), s.fine,
                                        pooled_region(s.mask)) for s in samples])


def system_maps(s: Scored, grounder: SentenceGrounder) -> tuple[np.ndarray, ...]:
    return (s.served, on_fine_grid(s.served, s), s.coarse, on_fine_grid(s.coarse, s), s.fine,
            blend(upsampled_decoder(s), s.fine, grounder.tuning(s.kind)))


def table(samples: Sequence[Scored], grounder: SentenceGrounder) -> str:
    """Pointing / IoU per finding and pooled, for each system."""
    scores = [[(float(pointing_hit(m, s.mask)), grounding_iou(m, s.mask))
               for m in system_maps(s, grounder)] for s in samples]
    head = f"{'finding':<27}{'n':>5}" + "".join(f"{name:>23}" for name in SYSTEMS)
    lines = [head, f"{'':<32}" + "".join(f"{'pointing   IoU':>23}" for _ in SYSTEMS)]
    rows = [(name, [i for i, s in enumerate(samples) if name in s.findings])
            for name in CHEXPERT_LABELS]
    rows.append(("all finding sentences", list(range(len(samples)))))
    for name, index in rows:
        if not index:
            continue
        cells = "".join(f"{np.mean([scores[i][k][0] for i in index]):>14.3f}"
                        f"{np.mean([scores[i][k][1] for i in index]):>9.3f}"
                        for k in range(len(SYSTEMS)))
        lines.append(f"{name:<27}{len(index):>5}{cells}")
    return "\n".join(lines)


def head_seconds(encoder: CheXQueryEncoder, head: FineGroundingHead, size: int,
                 repeats: int = 20) -> tuple[float, float]:
    """Median seconds of the frozen encoder pass and of the head, one image each."""
    image = torch.rand(1, 1, size, size)
    enc, fine = [], []
    with torch.no_grad():
        for _ in range(repeats + 2):
            began = time.perf_counter()
            inputs = frozen_inputs(encoder, image)
            mid = time.perf_counter()
            head(inputs)
            enc.append(mid - began)
            fine.append(time.perf_counter() - mid)
    return statistics.median(enc[2:]), statistics.median(fine[2:])


def run_measurement(model_dir: Path, head_dir: Path, count: int = 1000, fit_count: int = 500,
                    chunk: int = 50) -> str:
    """Print and return the table; write it beside the head as ``measurement.txt``."""
    model = recover_model(model_dir)
    encoder = frozen_encoder(model)
    head = load_head(head_dir)
    generator = ReportGenerator(model_dir)
    g = generator.grounder
    generator.grounder = RecordingGrounder(g.labels, g.tunings, g.fitted_on, g.side_cutoffs)
    seeds = benchmark_split("validate").seeds[:count]
    samples: list[Scored] = []
    began = time.perf_counter()
    for start in range(0, len(seeds), chunk):
        cases = render_cases(seeds[start : start + chunk])
        samples += collect(generator, encoder, head, cases, start)
        print(f"validate {start + len(cases)}/{len(seeds)} "
              f"{time.perf_counter() - began:.0f}s", flush=True)
    fit = [s for s in samples if s.study < fit_count]
    report = [s for s in samples if s.study >= fit_count]
    grounder = SentenceGrounder(tuple(generator.info.labels), fit_blend(fit))
    tunings = "\n".join(f"  {k}: w {t.query_weight:.2f} gamma {t.gamma:.2f}"
                        for k, t in sorted(grounder.tunings.items()))
    enc_s, head_s = head_seconds(encoder, head, model.config.image_size)
    text = (f"validate studies {fit_count}-{count - 1} ({len(report)} scored finding "
            f"sentences); (d) fitted on validate 0-{fit_count - 1} ({len(fit)} sentences)\n"
            f"{table(report, grounder)}\n\n(d) tunings (decoder^(1-w) * fine^w)^gamma:\n"
            f"{tunings}\n\nall validate 0-{count - 1} ((d) in-sample on 0-{fit_count - 1}):\n"
            f"{table(samples, grounder)}\n\nPyTorch, 1 image, median of 20, "
            f"{torch.get_num_threads()} threads: frozen encoder pass {enc_s * 1e3:.1f} ms, "
            f"fine head {head_s * 1e3:.1f} ms\n")
    print(text, flush=True)
    (head_dir / "measurement.txt").write_text(text)
    return text
