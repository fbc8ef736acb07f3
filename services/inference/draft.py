"""Turn Triton's whole-report answer into our ``Draft``: grounding in original pixels.

Triton sees only the square model input, so its boxes are in model pixels; the sentence
maps are mapped back here through the letterbox preprocessing recorded, with the same
``map_boxes`` the in-process generator uses, so served and offline boxes agree.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from radreport.data.labels import POSITIVE, UNCERTAIN
from radreport.eval.labeler import label_sentence
from radreport.model.grounding import Letterbox, attention_entropy, map_boxes
from services.common.schemas import Draft, DraftSentence, LetterboxInfo


def stated_labels(text: str) -> list[str]:
    """Findings a sentence asserts (positive or hedged), in the labeler's order."""
    return [label for label, value in label_sentence(text).items()
            if value in (POSITIVE, UNCERTAIN)]


def draft_sentence(served: dict[str, Any], letterbox: Letterbox,
                   box_threshold: float) -> DraftSentence:
    """One served sentence with its boxes in original-image pixels."""
    heatmap = np.asarray(served["heatmap"], dtype=np.float32)
    return DraftSentence(text=served["text"], section=served["section"],
                         boxes=map_boxes(heatmap, letterbox, box_threshold),
                         heatmap=served["heatmap"], labels=stated_labels(served["text"]))


def draft_from_served(served: dict[str, Any], sentences: list[DraftSentence],
                      letterbox: LetterboxInfo, inference_ms: float) -> Draft:
    """The whole report Triton served, with its sentences as ``draft_sentence`` made them
    while they streamed in."""
    if [s.text for s in sentences] != [s["text"] for s in served["sentences"]]:
        raise RuntimeError("the streamed sentences are not the served report's")
    entropies = [attention_entropy(np.asarray(s.heatmap, dtype=np.float32)) for s in sentences]
    return Draft(findings=served["findings"], impression=served["impression"],
                 sentences=sentences, label_probs=served["label_probs"],
                 token_ids=served["token_ids"], model_version=served["model_version"],
                 letterbox=letterbox,
                 attention_entropy=float(np.mean(entropies)) if entropies else None,
                 inference_ms=inference_ms, **safety_fields(served))


def safety_fields(served: dict[str, Any]) -> dict[str, Any]:
    """The safety net's keys of a served report; a model that predates them gives none,
    so the draft keeps its defaults (decisions unknown, nothing flagged)."""
    keys = ("calibrated_probs", "findings_present", "uncertain_findings",
            "calibrated_confidence", "ood_score", "ood_threshold", "out_of_distribution")
    return {key: served[key] for key in keys if served.get(key) is not None}
