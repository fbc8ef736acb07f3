"""A sentence's map, refined with the v2 queries' maps of what the sentence speaks of.

The decoder's cross-attention gives every word a map (seed 000), but the maps trained most
directly are the queries' (seed 003): each condition query's attention is supervised with
its finding's region, each anatomical query's with its organ. A sentence that states a
finding is grounded by the geometric blend ``decoder^(1 - w) * query^w`` with the mean map
of the findings it states; a pertinent negative ("No pleural effusion.") with the organ its
labels live in (lungs, heart, mediastinum). Sentences naming nothing keep the decoder's map.

Every map is then tempered, ``map^gamma``: display and boxes cut a map at a fraction of its
peak, and gamma sets which contour of the attention that cut follows (a diffuse organ wants
a low contour, a focal nodule a high one). Weights and gammas are fitted per kind of
sentence on the validate split (``radreport fit-grounding``) and kept in the model folder's
``grounding.json``; without that file maps are the decoder's, unchanged.

The same maps say on which side a lateralised finding lies: the share of its condition
query's attention on the patient's left of the mediastinum query's midline (the image's
right on a PA view). Where that read-out states the side more accurately than the
decoder's text on validate, its cut-offs are kept (``side_cutoffs``: below ``c`` right,
above ``1 - c`` left, else bilateral) and the findings guard holds the text to it. NumPy only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from radreport.data.labels import NEGATIVE
from radreport.eval.labeler import label_sentence, named_devices
from radreport.eval.metrics import upsample

GROUNDING_FILE = "grounding.json"
# The v2 anatomical queries, after the condition queries, in this order.
ANATOMY_QUERIES: tuple[str, ...] = ("cardiac", "left lung", "right lung", "mediastinum",
                                    "diaphragm", "spine")
ORGAN_QUERIES: dict[str, tuple[str, ...]] = {
    "heart": ("cardiac",), "lungs": ("left lung", "right lung"), "mediastinum": ("mediastinum",)}
# Where a label's pertinent negative points; the rest of the labels live in the lungs.
LABEL_ORGAN: dict[str, str] = {"Cardiomegaly": "heart", "Enlarged Cardiomediastinum":
                               "mediastinum", "Fracture": "bones", "Support Devices": "none"}
PARENT_LABELS = frozenset({"Lung Opacity", "Pneumonia"})  # named through a more specific one
DEFAULT_KIND = "finding"  # tuning for finding labels too rare in validate to fit alone
SIDE_WORDS = re.compile(r"\b(left|right|bilateral|both)\b")
MIDLINE_QUERY = "mediastinum"


def side_of(text: str) -> str | None:
    """left, right or bilateral as a sentence states it; None if it names no one side."""
    words = set(SIDE_WORDS.findall(text.lower()))
    if words & {"bilateral", "both"}:
        return "bilateral"
    if words == {"left"} or words == {"right"}:
        return words.pop()
    return None


def left_share(query_maps: np.ndarray, rows: Sequence[int], n_labels: int) -> float:
    """Share of the ``rows`` queries' attention on the patient's left of the midline.

    query_maps (Q, N) with N a square grid; the midline is the mean column of the
    mediastinum query's map; the patient's left is the image's right (PA convention).
    """
    grid = map_grid(query_maps)
    centres = np.arange(grid) + 0.5
    midline_cols = query_maps[n_labels + ANATOMY_QUERIES.index(MIDLINE_QUERY)].reshape(
        grid, grid).sum(axis=0)
    midline = float((midline_cols * centres).sum() / max(float(midline_cols.sum()), 1e-12))
    cols = query_maps[list(rows)].reshape(len(rows), grid, grid).sum(axis=(0, 1))
    total = float(cols.sum())
    return float(cols[centres >= midline].sum() / total) if total > 0 else 0.5


def side_from_share(share: float, cutoff: float) -> str:
    if share < cutoff:
        return "right"
    return "left" if share > 1.0 - cutoff else "bilateral"


@dataclass(frozen=True)
class MapTuning:
    query_weight: float = 0.0  # w in decoder^(1 - w) * query^w; 0 without a query map
    gamma: float = 1.0


@dataclass(frozen=True)
class SentenceKind:
    """What a sentence grounds on: ``finding:<label>``, ``organ:<organ>`` or ``other``."""

    name: str
    query_rows: tuple[int, ...] = ()  # rows of ``query_maps`` to average
    device_rows: tuple[int, ...] = ()  # rows of a fine head's device maps, where it has them


def sentence_kind(text: str, labels: Sequence[str]) -> SentenceKind:
    """The kind of a sentence from the labeler, with the query maps that belong to it."""
    values = label_sentence(text)
    stated = [k for k in labels if k in values and values[k] != NEGATIVE and k != "No Finding"]
    if stated:
        specific = [k for k in stated if k not in PARENT_LABELS] or stated
        devices = named_devices(text) if stated == ["Support Devices"] else ()
        first_device = len(labels) + len(ANATOMY_QUERIES)
        return SentenceKind(f"finding:{specific[0]}", tuple(labels.index(k) for k in stated),
                            tuple(first_device + i for i in devices))
    denied = {LABEL_ORGAN.get(k, "lungs") for k, v in values.items()
              if v == NEGATIVE and k != "No Finding"}
    if len(denied) != 1:
        return SentenceKind("other")
    organ = denied.pop()
    rows = tuple(len(labels) + ANATOMY_QUERIES.index(q) for q in ORGAN_QUERIES.get(organ, ()))
    return SentenceKind(f"organ:{organ}", rows)


def kind_query_map(kind: SentenceKind, query_maps: np.ndarray | None,
                   shape: tuple[int, ...]) -> np.ndarray | None:
    """The mean of the kind's query maps (Q, N) in ``shape``; None without any. A device
    sentence takes the rows of the devices it names where the maps have them (a fine head's
    device rows follow the queries), else the Support Devices query's."""
    if query_maps is None or not kind.query_rows:
        return None
    rows = kind.query_rows
    if kind.device_rows and max(kind.device_rows) < query_maps.shape[0]:
        rows = kind.device_rows
    return query_maps[list(rows)].mean(axis=0).reshape(shape)


def map_grid(maps: np.ndarray) -> int:
    """The side of the square grid of maps (..., N)."""
    grid = round(maps.shape[-1] ** 0.5)
    if grid * grid != maps.shape[-1]:
        raise ValueError(f"{maps.shape[-1]} cells do not form a square grid")
    return grid


def on_grid(heatmap: np.ndarray, grid: int) -> np.ndarray:
    """A (g, g) map on a (grid, grid) grid: itself if g == grid, else upsampled bilinearly
    (cell centres, as ``metrics.upsample``) and normalised to sum 1."""
    if heatmap.shape[0] == grid:
        return heatmap
    if grid < heatmap.shape[0]:
        raise ValueError(f"a {heatmap.shape[0]}-cell map cannot go down to {grid} cells")
    return _unit(upsample(heatmap, (grid, grid))).astype(np.float32)


def blend(decoder_map: np.ndarray, query_map: np.ndarray | None, tuning: MapTuning,
          ) -> np.ndarray:
    """``(decoder^(1-w) * query^w)^gamma``, normalised to sum 1 (shape of the input)."""
    out = _unit(decoder_map)
    if query_map is not None and tuning.query_weight > 0:
        w = tuning.query_weight
        out = out ** (1.0 - w) * _unit(query_map) ** w
    out = _unit(out) ** tuning.gamma
    return _unit(out).astype(np.float32)


def _unit(values: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, None)
    total = clipped.sum()
    return clipped / total if total > 0 else clipped


@dataclass(frozen=True)
class SentenceGrounder:
    """Per-kind tunings; kinds without one (and models without query maps) use defaults."""

    labels: tuple[str, ...]
    tunings: Mapping[str, MapTuning] = field(default_factory=dict)
    fitted_on: str = ""
    side_cutoffs: Mapping[str, float] = field(default_factory=dict)  # label -> cutoff

    def sides(self, query_maps: np.ndarray | None) -> dict[str, str]:
        """The side of each label with a cutoff, read from one image's query maps (Q, N)."""
        if query_maps is None:
            return {}
        return {label: side_from_share(left_share(query_maps, [self.labels.index(label)],
                                                  len(self.labels)), cutoff)
                for label, cutoff in self.side_cutoffs.items()}

    def refine(self, text: str, decoder_map: np.ndarray,
               query_maps: np.ndarray | None) -> np.ndarray:
        """decoder_map (grid, grid) -> the sentence's map on the query maps' grid (a fine
        head's 128 x 128 at 512 px, the decoder's map upsampled to it), summing to 1."""
        kind = sentence_kind(text, self.labels)
        tuning = self.tuning(kind.name)
        decoder_map = on_grid(decoder_map, decoder_map.shape[0] if query_maps is None
                              else map_grid(query_maps))
        if tuning == MapTuning():
            return decoder_map  # no tuning: the decoder's own map, as v1 serves it
        return blend(decoder_map, kind_query_map(kind, query_maps, decoder_map.shape), tuning)

    def tuning(self, kind: str) -> MapTuning:
        if kind in self.tunings:
            return self.tunings[kind]
        if kind.startswith("finding:") and DEFAULT_KIND in self.tunings:
            return self.tunings[DEFAULT_KIND]
        return MapTuning()

    def to_dict(self) -> dict[str, Any]:
        return {"fitted_on": self.fitted_on, "labels": list(self.labels),
                "kinds": {k: {"query_weight": t.query_weight, "gamma": t.gamma}
                          for k, t in sorted(self.tunings.items())},
                "side_cutoffs": dict(sorted(self.side_cutoffs.items()))}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, labels: Sequence[str]) -> SentenceGrounder:
        """The folder's tunings, or the identity (decoder maps as they are) without a file."""
        file = Path(path)
        if not file.exists():
            return cls(tuple(labels))
        data = json.loads(file.read_text())
        if list(data.get("labels", labels)) != list(labels):
            raise ValueError(f"{file} was fitted for other labels than the model's")
        tunings = {k: MapTuning(float(v["query_weight"]), float(v["gamma"]))
                   for k, v in data["kinds"].items()}
        for name, tuning in tunings.items():
            if not (0.0 <= tuning.query_weight <= 1.0 and tuning.gamma > 0):
                raise ValueError(f"{file}: kind {name!r} has an invalid tuning {tuning}")
        cutoffs = {str(k): float(v) for k, v in data.get("side_cutoffs", {}).items()}
        if any(k not in labels or not 0.0 < v < 0.5 for k, v in cutoffs.items()):
            raise ValueError(f"{file}: side cutoffs must name model labels and lie in (0, 0.5)")
        return cls(tuple(labels), tunings, str(data.get("fitted_on", "")), cutoffs)
