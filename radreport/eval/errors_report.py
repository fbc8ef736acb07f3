"""errors.html (self-contained: PNGs embedded) and errors.json of ``radreport audit errors``.

Example overlays are drawn by the grounding service's own ``render_overlay`` (heat in
colour over the image, boxes in green, a legend strip), so they look as radiologists see
them. Examples are the first of each kind in study order, not picked by hand.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from radreport.eval.audit import AuditData, AuditSentence, MissedFinding
from radreport.eval.errors import (
    ErrorSummary,
    attention_right_text_wrong,
    entropies,
    summarise,
    text_right_attention_wrong,
)

OVERLAY_SIDE = 320
SECTIONS = (("tp", "True positives", "sentences stating a finding the study has"),
            ("fp", "False positives", "sentences stating a finding the study does not have"),
            ("fn", "False negatives", "true findings the draft never states; the heat is the "
                                      "mean of the draft's sentence maps, the box the truth"),
            ("attention-right-text-wrong", "Attention right, text wrong",
             "false positives whose map peaks inside a true finding region"),
            ("text-right-attention-wrong", "Text right, attention wrong",
             "true positives whose map peaks outside their finding's region"))


@dataclass
class Example:
    section: str
    study_id: str
    caption: str
    png: bytes


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), ends exclusive, of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _png(data: AuditData, study: int, heatmap: np.ndarray, masks: Sequence[np.ndarray],
         caption: str) -> bytes:
    from services.grounding.overlays import render_overlay

    image = render_overlay(data.cases[study].image, heatmap, data.drafts[study].letterbox,
                           [mask_box(m) for m in masks if m.any()], caption, OVERLAY_SIDE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _sentence_example(data: AuditData, section: str, s: AuditSentence) -> Example:
    heatmap = data.drafts[s.study].sentences[s.index].heatmap
    if s.reference is not None:
        masks = [s.reference.mask]
        caption = f"{s.text} (IoU {s.iou:.2f}, pointing {'hit' if s.hit else 'miss'})"
    else:
        masks = [r.mask for r in data.cases[s.study].positives]
        caption = f"{s.text} (not in the study; boxes: its true findings)"
    return Example(section, data.cases[s.study].study_id, caption,
                   _png(data, s.study, heatmap, masks, caption))


def _missed_example(data: AuditData, m: MissedFinding) -> Example:
    maps = [s.heatmap for s in data.drafts[m.study].sentences]
    heatmap = np.mean(maps, axis=0) if maps else np.zeros((16, 16), np.float32)
    caption = f"missed: {m.reference.text}"
    return Example("fn", data.cases[m.study].study_id, caption,
                   _png(data, m.study, heatmap, [m.reference.mask], caption))


def examples(data: AuditData, per_kind: int = 4) -> list[Example]:
    tp = [s for s in data.sentences if s.kind == "TP"][:per_kind]
    fp = [s for s in data.sentences if s.kind == "FP"][:per_kind]
    out = [_sentence_example(data, "tp", s) for s in tp]
    out += [_sentence_example(data, "fp", s) for s in fp]
    out += [_missed_example(data, m) for m in data.missed[:per_kind]]
    out += [_sentence_example(data, "attention-right-text-wrong", s)
            for s in attention_right_text_wrong(data)[:per_kind]]
    out += [_sentence_example(data, "text-right-attention-wrong", s)
            for s in text_right_attention_wrong(data)[:per_kind]]
    return out


def plots(data: AuditData, summary: ErrorSummary) -> dict[str, bytes]:
    """Entropy of TP vs FP sentences, and IoU/pointing per finding, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = [i / 40 for i in range(41)]
    for kind, label in (("TP", "correct (TP)"), ("FP", "incorrect (FP)")):
        values = entropies(data, kind)
        if values:
            ax.hist(values, bins=bins, density=True, alpha=0.6, label=f"{label}, n={len(values)}")
    ax.set_xlabel("normalised attention entropy (0 one cell, 1 uniform)")
    ax.set_ylabel("density")
    ax.legend()
    out["entropy"] = _fig_png(fig)
    rows = [r for r in summary.findings if r.tp_sentences]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 0.35 * len(rows) + 1))
        y = np.arange(len(rows))
        ax.barh(y - 0.2, [r.iou for r in rows], 0.4, label="mean IoU")
        ax.barh(y + 0.2, [r.pointing for r in rows], 0.4, label="pointing rate")
        ax.set_yticks(y, [f"{r.finding} (n={r.tp_sentences})" for r in rows], fontsize=8)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=8)
        out["per_finding"] = _fig_png(fig)
    return out


def _fig_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def page(data: AuditData, summary: ErrorSummary, figures: dict[str, bytes],
         shown: Sequence[Example]) -> str:
    e = summary.entropy
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Error analysis: "
             f"{html.escape(data.split)} split</title><style>body{{font-family:sans-serif;"
             "max-width:70em}td,th{padding:2px 8px;text-align:right}figure{display:inline-block;"
             "width:330px;vertical-align:top}figcaption{font-size:80%}</style></head><body>",
             f"<h1>Error analysis: {summary.studies} studies of the {html.escape(data.split)} "
             "split</h1>",
             "<p>Finding sentences of the drafts, sorted into true positives (stating a finding "
             "the study has, paired with its reference sentence: the sentences radreport "
             "evaluate scores for grounding), false positives (every finding stated is absent "
             "from the study's labels) and false negatives (reference finding sentences whose "
             "labels the draft never states). <b>Attention right, text wrong</b>: a false "
             "positive whose map's peak lies inside one of the study's true finding regions. "
             "<b>Text right, attention wrong</b>: a true positive whose map's peak lies outside "
             "its finding's region (a pointing miss). Entropy is normalised: bits / log2(cells)."
             "</p>",
             "<table><tr><th>TP sentences</th><th>FP sentences</th><th>FN findings</th>"
             "<th>grounding IoU</th><th>pointing</th><th>attention right, text wrong</th>"
             "<th>text right, attention wrong</th><th>entropy TP (mean/median)</th>"
             "<th>entropy FP (mean/median)</th></tr>",
             f"<tr><td>{summary.tp_sentences}</td><td>{summary.fp_sentences}</td>"
             f"<td>{summary.missed}</td><td>{_num(summary.grounding_iou)}</td>"
             f"<td>{_num(summary.pointing)}</td><td>{summary.attention_right_text_wrong}</td>"
             f"<td>{summary.text_right_attention_wrong}</td>"
             f"<td>{_num(e['TP']['mean'])} / {_num(e['TP']['median'])}</td>"
             f"<td>{_num(e['FP']['mean'])} / {_num(e['FP']['median'])}</td></tr></table>",
             "<h2>Per-finding grounding accuracy</h2><table><tr><th>finding</th><th>TP</th>"
             "<th>FP</th><th>FN</th><th>mean IoU</th><th>pointing</th><th>entropy</th></tr>"]
    parts += [f"<tr><td>{html.escape(r.finding)}</td><td>{r.tp_sentences}</td>"
              f"<td>{r.fp_sentences}</td><td>{r.missed}</td><td>{_num(r.iou)}</td>"
              f"<td>{_num(r.pointing)}</td><td>{_num(r.entropy)}</td></tr>"
              for r in summary.findings]
    parts += ["</table><h2>Plots</h2>"] + [_img(png, name) for name, png in figures.items()]
    for key, title, meaning in SECTIONS:
        items = [x for x in shown if x.section == key]
        parts.append(f"<h2 id='{key}'>{title}</h2><p>{meaning} ({len(items)} shown)</p>")
        parts += [f"<figure>{_img(x.png, key)}<figcaption>{html.escape(x.study_id)}: "
                  f"{html.escape(x.caption)}</figcaption></figure>" for x in items]
    return "\n".join([*parts, "</body></html>\n"])


def audit_errors(data: AuditData, out: Path, per_kind: int = 4) -> ErrorSummary:
    """The whole command: summary, plots, overlays, then errors.html and errors.json."""
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(data)
    (out / "errors.html").write_text(page(data, summary, plots(data, summary),
                                          examples(data, per_kind)))
    payload = {"split": data.split, "system": data.run.name, **asdict(summary)}
    (out / "errors.json").write_text(json.dumps(payload, indent=1) + "\n")
    return summary
