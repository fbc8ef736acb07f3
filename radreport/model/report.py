"""A shipped model folder, run without torch: radiograph in, grounded draft report out.

A model folder holds ``encoder.onnx`` and ``decoder_step.onnx`` (with optional ``.int8`` /
``.fp16`` variants), ``tokenizer.json`` and ``model.json`` (name, version, input size,
labels). ``ReportGenerator`` is what evaluation and the serving backend both run, so the
figures in the model card are figures of the code that serves reports: preprocessing to
the model's square input (aspect kept, padded), greedy decoding over the ONNX graphs, the
report split into sections and sentences, and one grounding map and box list per sentence
in the original image's pixels.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from radreport.data.labels import CHEXPERT_LABELS
from radreport.data.phantoms.study import Box
from radreport.model.grounding import (
    Letterbox,
    SentenceSpan,
    map_boxes,
    report_spans,
    sentence_maps,
)
from radreport.model.guard import FindingsGuard, GuardedReport, guarded_decode
from radreport.model.onnx_runtime import DEFAULT_PROVIDERS, EncoderOutput, OnnxReportModel
from radreport.model.prompt import ClinicalContext
from radreport.model.query_grounding import GROUNDING_FILE, SentenceGrounder
from radreport.model.safety import SafetyNet, StudySafety
from radreport.model.tokenizer import ReportTokenizer, detokenize

DEFAULT_MODEL_DIR = Path(__file__).parent / "default"
MODEL_INFO_FILE, TOKENIZER_FILE = "model.json", "tokenizer.json"
CALIBRATION_FILE = "calibration.json"
Variant = Literal["fp32", "int8", "fp16"]
VARIANTS: tuple[Variant, ...] = ("fp32", "int8", "fp16")


@dataclass(frozen=True)
class ModelInfo:
    """What ``model.json`` says of a model folder."""

    name: str
    version: str
    image_size: int
    labels: tuple[str, ...] = CHEXPERT_LABELS
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        """``name:version``: reports and idempotency keys name the model this way."""
        return f"{self.name}:{self.version}"

    @classmethod
    def load(cls, path: str | Path) -> ModelInfo:
        data = json.loads(Path(path).read_text())
        known = {"name", "version", "image_size", "labels"}
        return cls(str(data["name"]), str(data["version"]), int(data["image_size"]),
                   tuple(data.get("labels", CHEXPERT_LABELS)),
                   {k: v for k, v in data.items() if k not in known})

    def save(self, path: str | Path) -> None:
        data = {"name": self.name, "version": self.version, "image_size": self.image_size,
                "labels": list(self.labels), **self.extra}
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def model_files(model_dir: str | Path, variant: Variant = "fp32") -> tuple[Path, Path]:
    """Encoder and decoder-step graph paths of one precision variant."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown model variant {variant!r}; expected one of {VARIANTS}")
    infix = "" if variant == "fp32" else f".{variant}"
    folder = Path(model_dir)
    return folder / f"encoder{infix}.onnx", folder / f"decoder_step{infix}.onnx"


def variant_calibration_file(model_dir: str | Path, variant: Variant = "fp32") -> Path:
    """Where a variant's own safety net lives: ``calibration.json`` for FP32,
    ``calibration.<variant>.json`` for the others (``fit-safety --variant``)."""
    name = CALIBRATION_FILE if variant == "fp32" else f"calibration.{variant}.json"
    return Path(model_dir) / name


def calibration_file(model_dir: str | Path, variant: Variant = "fp32") -> Path:
    """The safety net fitted on a variant's own outputs (``calibration.int8.json``), else
    the FP32 one: quantised features move enough to matter to the OOD gate."""
    own = variant_calibration_file(model_dir, variant)
    return own if own.exists() else variant_calibration_file(model_dir)


def to_model_input(image: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """(H, W) float image in [0, 1] -> (size, size) float32, aspect kept, zero padded.

    Resized by area averaging exactly as training resizes (``area_resize``), whatever the
    ratio; the letterbox maps grounding boxes back to original pixels.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    height, width = image.shape
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    pixels = np.ascontiguousarray(image, dtype=np.float32)
    if (new_h, new_w) != (height, width):
        pixels = area_resize(pixels, new_h, new_w)
    pad_x, pad_y = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.zeros((size, size), dtype=np.float32)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = pixels
    return canvas, Letterbox(size, new_w / width, pad_x, pad_y, (height, width))


def area_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Adaptive average pooling, as torch's ``interpolate(mode="area")`` that training uses.

    Output cell ``i`` of ``n`` averages input rows ``floor(i*H/n)`` to ``ceil((i+1)*H/n)``
    (and likewise columns); at a ratio that is not whole, neighbouring windows share a
    pixel. A box filter (PIL's BOX) weights partial pixels instead: at 512 -> 384 px the
    two differ by up to 0.7 on noise, enough to change what the model finds.
    """
    rows = _pool_axis(np.asarray(image, dtype=np.float32), height, axis=0)
    return _pool_axis(rows, width, axis=1)


def _pool_axis(x: np.ndarray, out: int, axis: int) -> np.ndarray:
    """Window means along one axis: runs between window starts summed in one pass
    (``reduceat``), plus the pixel a window shares with the next."""
    size = x.shape[axis]
    index = np.arange(out)
    start, stop = (index * size) // out, -((-(index + 1) * size) // out)
    sums = np.add.reduceat(x, start, axis=axis)  # [start[i], start[i+1]), or x[start[i]]
    following = np.append(start[1:], size)
    shared = np.flatnonzero((stop > following) & (following > start))
    if shared.size:
        picked: list[slice | np.ndarray] = [slice(None)] * x.ndim
        picked[axis] = shared
        sums[tuple(picked)] += np.take(x, following[shared], axis=axis)
    shape = [1] * x.ndim
    shape[axis] = out
    return (sums / (stop - start).reshape(shape)).astype(np.float32)


MAP_DIGITS = 3  # significant digits of a served map's cells
MAP_FLOOR = 1e-4  # cells below this fraction of the peak are served as 0 (mass lost < 1%)


def rounded_map(heatmap: np.ndarray, digits: int = MAP_DIGITS,
                floor: float = MAP_FLOOR) -> np.ndarray:
    """The map with ``digits`` significant digits per cell and cells below ``floor`` x its
    peak set to 0 (float64, so JSON prints each cell's shortest form)."""
    cells = np.nan_to_num(np.asarray(heatmap, dtype=np.float64))
    peak = float(np.abs(cells).max()) if cells.size else 0.0
    kept = np.abs(cells) >= floor * peak
    if peak <= 0 or not kept.any():
        return np.zeros_like(cells)
    scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.where(kept, np.abs(cells), 1.0))))
    return np.where(kept, np.round(cells * scale) / scale, 0.0)


@dataclass
class ReportSentence:
    text: str
    section: str  # "findings" | "impression"
    heatmap: np.ndarray  # (grid, grid) float32, sums to 1 over the model input
    boxes: list[Box]  # original image pixels, largest region first

    def to_dict(self, digits: int = 5) -> dict[str, Any]:
        """``digits`` significant digits per cell (at most), cells below ``MAP_FLOOR`` of the
        peak as 0: a 128 x 128 map is about 160 KB of JSON (0.4.0, 2026-12-02)."""
        return {"text": self.text, "section": self.section,
                "boxes": [list(b) for b in self.boxes],
                "heatmap": rounded_map(self.heatmap, min(digits, MAP_DIGITS)).tolist()}


@dataclass
class DraftReport:
    findings: str
    impression: str
    sentences: list[ReportSentence]
    label_probs: dict[str, float]  # the head's raw sigmoid, as published since v1
    token_ids: list[int]  # generated ids up to, not including, EOS
    letterbox: Letterbox
    model_version: str
    safety: StudySafety | None = None

    @property
    def text(self) -> str:
        return f"FINDINGS: {self.findings}\n\nIMPRESSION: {self.impression}"

    def to_dict(self, digits: int = 5) -> dict[str, Any]:
        """Plain JSON types, maps rounded: what crosses a process or network boundary."""
        return {
            "text": self.text, "findings": self.findings, "impression": self.impression,
            "sentences": [s.to_dict(digits) for s in self.sentences],
            "label_probs": {k: round(v, digits) for k, v in self.label_probs.items()},
            "token_ids": self.token_ids, "model_version": self.model_version,
            **({} if self.safety is None else self.safety.to_dict(digits)),
        }


@dataclass
class SentenceDecoded:
    """A sentence of image ``item`` of the batch, final as soon as it is decoded."""

    item: int
    index: int  # position in its report
    sentence: ReportSentence


@dataclass
class ReportDecoded:
    """The whole report of image ``item``, after its last sentence."""

    item: int
    report: DraftReport


class ReportGenerator:
    """One model folder loaded once; ``generate`` drafts reports for a batch of images."""

    def __init__(self, model_dir: str | Path = DEFAULT_MODEL_DIR, variant: Variant = "fp32",
                 threads: int | None = None, runtime: OnnxReportModel | None = None,
                 providers: Sequence[str | tuple[str, dict[str, str]]] | None = None,
                 guard: bool = True, grounding: bool = True) -> None:
        """``runtime`` replaces the in-process graphs, e.g. by one calling Triton models;
        ``providers`` are ONNX Runtime execution providers (default: CPU), e.g. TensorRT and
        CUDA with their options on the GPU target. ``grounding=False`` keeps the decoder's
        sentence maps as they are, without the folder's ``grounding.json`` tunings."""
        folder = Path(model_dir)
        self.info = ModelInfo.load(folder / MODEL_INFO_FILE)
        self.tokenizer = ReportTokenizer.load(folder / TOKENIZER_FILE)
        if runtime is None:
            options = ort.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
            # idle ONNX Runtime threads spin by default: between the ~60 short decoder steps
            # they took a core from the Python grounding (0.4.0, 2 cores: 200 -> 140 ms)
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            runtime = OnnxReportModel(*model_files(folder, variant),
                                      providers=providers or DEFAULT_PROVIDERS, options=options)
        self.onnx = runtime
        self.variant = variant
        self.safety_net = SafetyNet.load(calibration_file(folder, variant), self.info.labels)
        self.grounder = (SentenceGrounder.load(folder / GROUNDING_FILE, self.info.labels)
                         if grounding else SentenceGrounder(self.info.labels))
        self.guard = guard  # v2 only: see guard.py

    def generate(self, images: Sequence[np.ndarray], box_threshold: float = 0.5,
                 contexts: Sequence[ClinicalContext | None] | None = None,
                 ) -> list[DraftReport]:
        """Greedy drafts for (H, W) images in [0, 1], any size; one batch through the graphs."""
        if not images:
            return []
        prepared = [to_model_input(image, self.info.image_size) for image in images]
        batch = np.stack([pixels for pixels, _ in prepared])[:, None]  # (B, 1, S, S)
        return self.generate_prepared(batch, [letterbox for _, letterbox in prepared],
                                      box_threshold, contexts)

    def generate_prepared(self, batch: np.ndarray, letterboxes: Sequence[Letterbox] | None = None,
                          box_threshold: float = 0.5,
                          contexts: Sequence[ClinicalContext | None] | None = None,
                          ) -> list[DraftReport]:
        """Drafts for model inputs (B, 1, S, S) that were preprocessed elsewhere.

        Without letterboxes, boxes stay in model-input pixels. ``contexts`` (optional, per
        image) are the request's clinical indication, age and sex for v2 models. The
        reports are those ``stream_prepared`` streams, collected.
        """
        drafts: dict[int, DraftReport] = {}
        for event in self.stream_prepared(batch, letterboxes, box_threshold, contexts):
            if isinstance(event, ReportDecoded):
                drafts[event.item] = event.report
        return [drafts[i] for i in range(len(batch))]

    def _encode(self, batch: np.ndarray, contexts: Sequence[ClinicalContext | None] | None,
                ) -> tuple[EncoderOutput, list[StudySafety], np.ndarray | None]:
        """Encoder outputs, each study's safety read-out, and the v2 decoder prompt made
        of the calibrated head's decisions (so the text states what the head found)."""
        encoded = self.onnx.encode(batch)
        safety = self.safety_net.assess(encoded.label_probs, encoded.features)
        if not self.onnx.prompt_len:
            return encoded, safety, None
        if contexts is not None and len(contexts) != len(batch):
            raise ValueError(f"{len(contexts)} contexts for a batch of {len(batch)}")
        contexts = contexts or [None] * len(batch)
        prompt = np.array([
            self.tokenizer.encode_prompt([label in s.findings_present for label in
                                          self.info.labels], context)
            for s, context in zip(safety, contexts, strict=True)], dtype=np.int64)
        return encoded, safety, prompt

    def _checked(self, batch: np.ndarray,
                 letterboxes: Sequence[Letterbox] | None) -> Sequence[Letterbox]:
        """The letterboxes of a (B, 1, S, S) batch; identity ones (model pixels) if none."""
        size = self.info.image_size
        if batch.ndim != 4 or batch.shape[1:] != (1, size, size):
            raise ValueError(f"model input of shape {batch.shape} is not (B, 1, {size}, {size})")
        if letterboxes is None:
            return [Letterbox(size, 1.0, 0, 0, (size, size))] * len(batch)
        return letterboxes

    def stream_prepared(self, batch: np.ndarray, letterboxes: Sequence[Letterbox] | None = None,
                        box_threshold: float = 0.5,
                        contexts: Sequence[ClinicalContext | None] | None = None,
                        ) -> Iterator[SentenceDecoded | ReportDecoded]:
        """``generate_prepared`` that yields each sentence as soon as it is decoded.

        A sentence is final once the token after its closing one is known (that token
        decides a decimal point or a section header); the rest of a report is final at its
        end (EOS or PAD). Each image's ``ReportDecoded`` follows its last sentence and is
        made of the sentences streamed, which are exactly those of ``generate_prepared``.
        """
        letterboxes = self._checked(batch, letterboxes)
        encoded, safety, prompt = self._encode(batch, contexts)
        reports = [_GrowingReport(letterbox, s, self._guard(s, prompt, item_maps), item_maps,
                                  item_grounding)
                   for letterbox, s, item_maps, item_grounding in zip(
                       letterboxes, safety, _rows(encoded.query_maps, len(safety)),
                       _rows(encoded.grounding_maps, len(safety)), strict=True)]
        ends = (self.onnx.eos_id, self.onnx.pad_id)
        for step in self.onnx.greedy_steps(encoded.memory_kv, prompt=prompt):
            for item, report in enumerate(reports):
                if report.finished or report.diverted:
                    continue
                token = int(step.tokens[item])
                if not report.ended:
                    if token in ends:
                        report.ended = True
                    else:
                        report.ids.append(token)
                        report.words.append(self.tokenizer.id_to_token(token))
                        report.attention.append(step.attention[item])
                yield from self._new_sentences(item, report, box_threshold)
                if step.finished[item] and not report.diverted:
                    if report.guard and report.guard.missing(s.text for s in report.sentences):
                        report.diverted = True  # a finding the head found is unstated
                        continue
                    report.finished = True
                    yield self._report_decoded(item, report, encoded)
        for item, report in enumerate(reports):
            if report.diverted:
                assert prompt is not None
                yield from self._guarded(item, report, encoded, prompt[item], box_threshold)
            elif not report.finished:  # cut at max_len
                report.ended = True
                yield from self._new_sentences(item, report, box_threshold)
                yield self._report_decoded(item, report, encoded)

    def _guard(self, safety: StudySafety, prompt: np.ndarray | None,
               query_maps: np.ndarray | None) -> FindingsGuard | None:
        """The findings guard of a prompted (v2) report, unless turned off: the head's
        findings, and the sides the query maps read where those are trusted."""
        if prompt is None or not self.guard:
            return None
        sides = {label: side for label, side in self.grounder.sides(query_maps).items()
                 if label in safety.findings_present}
        return FindingsGuard(frozenset(safety.findings_present), sides)

    def _guarded(self, item: int, report: _GrowingReport, encoded: EncoderOutput,
                 prompt: np.ndarray, box_threshold: float,
                 ) -> Iterator[SentenceDecoded | ReportDecoded]:
        """The rest of a report that broke a guard rule, decoded alone under the guard from
        its last accepted sentence; the sentences already streamed stay as they are."""
        assert report.guard is not None
        end = report.accepted_end
        done = guarded_decode(self.onnx, self.tokenizer,
                              encoded.memory_kv[:, :, item : item + 1], prompt.tolist(),
                              report.guard,
                              GuardedReport(report.ids[:end], report.attention[:end]))
        report.ids, report.attention = done.ids, done.attention
        report.words = self.tokenizer.tokens(done.ids)
        report.ended, report.diverted, report.guard = True, False, None
        yield from self._new_sentences(item, report, box_threshold)
        report.finished = True
        yield self._report_decoded(item, report, encoded)

    def _new_sentences(self, item: int, report: _GrowingReport, box_threshold: float,
                       ) -> Iterator[SentenceDecoded]:
        words = report.words
        spans = [s for s in report_spans(words) if report.ended or s.end + 1 < len(words)]
        for span in spans[len(report.sentences):]:
            sentence = self._sentence(words, np.stack(report.attention[span.start : span.end]),
                                      span, report, box_threshold)
            if report.guard is not None and report.guard.contradicts(sentence.text):
                report.diverted = True  # held back: the guard decodes it again
                return
            report.sentences.append(sentence)
            report.accepted_end = span.end
            yield SentenceDecoded(item, len(report.sentences) - 1, sentence)

    def _report_decoded(self, item: int, report: _GrowingReport,
                        encoded: EncoderOutput) -> ReportDecoded:
        return ReportDecoded(item, self._report(report.ids, report.sentences,
                                                encoded.label_probs[item], report.letterbox,
                                                report.safety))

    def _sentence(self, words: Sequence[str], attention: np.ndarray, span: SentenceSpan,
                  report: _GrowingReport, box_threshold: float) -> ReportSentence:
        """One sentence from the report's words and the attention rows of its own tokens,
        its map refined with the queries' maps of what it states (query_grounding.py)."""
        tokens = words[span.start : span.end]
        (decoder_map,) = sentence_maps(tokens, attention, [(0, len(tokens))])
        text = detokenize(tokens, self.tokenizer.truecase)
        heatmap = self.grounder.refine(text, decoder_map, report.grounding_maps)
        return ReportSentence(text, span.section, heatmap,
                              map_boxes(heatmap, report.letterbox, box_threshold))

    def _report(self, token_ids: list[int], sentences: list[ReportSentence], probs: np.ndarray,
                letterbox: Letterbox, safety: StudySafety) -> DraftReport:
        return DraftReport(
            findings=_section_text(sentences, "findings"),
            impression=_section_text(sentences, "impression"),
            sentences=sentences,
            label_probs={name: float(p) for name, p in zip(self.info.labels, probs,
                                                           strict=True)},
            token_ids=token_ids,
            letterbox=letterbox,
            model_version=self.info.model_version,
            safety=safety,
        )


@dataclass
class _GrowingReport:
    """One image's report while the batched greedy loop extends it."""

    letterbox: Letterbox
    safety: StudySafety
    guard: FindingsGuard | None = None  # v2: the text must state the head's findings
    query_maps: np.ndarray | None = None  # (Q, N) v2: the queries' maps of this image
    grounding_maps: np.ndarray | None = None  # (Q[+D], N') the maps sentences ground on: the
    # fine head's where the model has one, else ``query_maps``
    ids: list[int] = field(default_factory=list)  # generated, up to its end (EOS or PAD)
    words: list[str] = field(default_factory=list)
    attention: list[np.ndarray] = field(default_factory=list)  # a (N,) row per token
    sentences: list[ReportSentence] = field(default_factory=list)  # final ones, in order
    ended: bool = False  # its end token seen (later tokens are not part of the report)
    finished: bool = False  # EOS seen: its ReportDecoded is out
    diverted: bool = False  # broke a guard rule: decoded again alone after the batch
    accepted_end: int = 0  # ids up to the end of the last sentence streamed


def _rows(maps: np.ndarray | None, count: int) -> list[np.ndarray | None]:
    return [None] * count if maps is None else list(maps)


def _section_text(sentences: Sequence[ReportSentence], section: str) -> str:
    return " ".join(s.text for s in sentences if s.section == section)
