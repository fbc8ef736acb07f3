"""Triton's served report -> our Draft: the safety net's keys are copied, older models'
reports (without them) still make a valid draft with nothing flagged."""

from __future__ import annotations

from typing import Any

import numpy as np

from radreport.model.grounding import Letterbox
from services.common.schemas import LetterboxInfo
from services.inference.draft import draft_from_served, draft_sentence

LETTERBOX = LetterboxInfo(size=256, scale=0.5, pad_x=0.0, pad_y=0.0, original_shape=(512, 512))
HEAT = (np.full((16, 16), 1 / 256)).tolist()
SAFETY = {"calibrated_probs": {"Pneumothorax": 0.61, "Edema": 0.1},
          "findings_present": ["Pneumothorax"], "uncertain_findings": ["Pneumothorax"],
          "calibrated_confidence": 0.42, "ood_score": 27.5, "ood_threshold": 20.0,
          "out_of_distribution": True}


def _served(**extra: Any) -> dict[str, Any]:
    sentence = {"text": "Small left pneumothorax.", "section": "findings",
                "boxes": [], "heatmap": HEAT}
    return {"findings": "Small left pneumothorax.", "impression": "Pneumothorax.",
            "sentences": [sentence], "label_probs": {"Pneumothorax": 0.55, "Edema": 0.2},
            "token_ids": [4, 5], "model_version": "radreport:2.0.0", **extra}


def _draft(served: dict[str, Any]) -> Any:
    box = Letterbox(256, 0.5, 0.0, 0.0, (512, 512))
    sentences = [draft_sentence(s, box, 0.5) for s in served["sentences"]]
    return draft_from_served(served, sentences, LETTERBOX, 12.0)


def test_the_safety_net_is_copied_into_the_draft() -> None:
    draft = _draft(_served(**SAFETY))
    assert draft.calibrated_probs == SAFETY["calibrated_probs"]
    assert draft.findings_present == ["Pneumothorax"]
    assert draft.uncertain_findings == ["Pneumothorax"]
    assert (draft.calibrated_confidence, draft.ood_score, draft.ood_threshold) == (
        0.42, 27.5, 20.0)
    assert draft.out_of_distribution
    assert draft.label_probs == {"Pneumothorax": 0.55, "Edema": 0.2}  # raw, unchanged


def test_a_v1_model_without_calibration_keeps_null_ood_values() -> None:
    v1 = {**SAFETY, "uncertain_findings": [], "ood_score": None, "ood_threshold": None,
          "out_of_distribution": False}
    draft = _draft(_served(**v1))
    assert draft.ood_score is None and draft.ood_threshold is None
    assert not draft.out_of_distribution and draft.findings_present == ["Pneumothorax"]


def test_a_report_from_before_the_safety_net_is_still_a_draft() -> None:
    draft = _draft(_served())
    assert draft.findings_present is None and draft.calibrated_probs is None
    assert draft.calibrated_confidence is None and not draft.out_of_distribution
