"""The v2 rows of ``radreport evaluate`` on hand-made drafts."""

from __future__ import annotations

import numpy as np
import pytest

from radreport.data.labels import CHEXPERT_LABELS
from radreport.eval.evaluate import render_case
from radreport.eval.safety_metrics import (
    anatomy_region,
    laterality_counts,
    safety_statistics,
    side_of,
)
from radreport.model.grounding import Letterbox
from radreport.model.report import DraftReport, ReportSentence
from radreport.model.safety import StudySafety


def sentence(text: str, heatmap: np.ndarray | None = None) -> ReportSentence:
    return ReportSentence(text, "findings",
                          np.full((4, 4), 1 / 16, np.float32) if heatmap is None else heatmap, [])


def draft(*texts: str, present: tuple[str, ...] = (), uncertain: tuple[str, ...] = (),
          ood: bool = False) -> DraftReport:
    probs = {k: float(k in present) for k in CHEXPERT_LABELS}
    safety = StudySafety(probs, present, uncertain, 0.9, 1.0, 2.0, ood)
    return DraftReport("", "", [sentence(t) for t in texts], probs, [],
                       Letterbox.fit((512, 512), 256), "test:0", safety)


def test_sides_and_anatomy_regions_are_read_from_the_text() -> None:
    assert side_of("Small left pleural effusion.") == "left"
    assert side_of("There are small bilateral pleural effusions.") == "bilateral"
    assert side_of("Atelectasis at both lung bases.") == "bilateral"
    assert side_of("The heart is enlarged.") is None
    assert anatomy_region("Heart size is normal.") == "heart"
    assert anatomy_region("No pneumothorax.") == "lungs"
    assert anatomy_region("The soft tissues are unremarkable.") == "chest"
    assert anatomy_region("Small left pleural effusion.") is None


def test_laterality_compares_with_the_reference_sentence_of_the_same_finding() -> None:
    case = next(c for c in (render_case(s) for s in range(2_000_000, 2_000_200))
                if any(r.labels == {"Pleural Effusion"} and side_of(r.text) in ("left", "right")
                       for r in c.positives))
    ref = next(r for r in case.positives if r.labels == {"Pleural Effusion"})
    side = side_of(ref.text)
    other = "right" if side == "left" else "left"
    assert laterality_counts(draft(f"Small {side} pleural effusion."), case) == (1, 1)
    assert laterality_counts(draft(f"Small {other} pleural effusion."), case) == (0, 1)
    assert laterality_counts(draft("Heart size is normal."), case) == (0, 0)


def test_rows_count_flags_disagreement_and_ood() -> None:
    cases = [render_case(s) for s in range(2_000_000, 2_000_006)]
    drafts = [draft("No pneumothorax.") for _ in cases]
    drafts[0] = draft("No pneumothorax.", present=("Pneumothorax",))  # head only
    drafts[1] = draft("No pneumothorax.", uncertain=("Fracture",))
    drafts[2] = draft("No pneumothorax.", ood=True)
    baseline = {name: np.ones((128, 128), np.float32) for name in cases[0].anatomy}
    stats = safety_statistics(drafts, cases, baseline)
    idx = np.arange(len(cases))
    assert stats["Head/text disagreement (critical)"](idx) == pytest.approx(1 / 6)
    assert stats["Review-flag rate"](idx) == pytest.approx(3 / 6)
    assert stats["OOD flag rate"](idx) == pytest.approx(1 / 6)
    lungs = stats["Grounding IoU (negative/anatomical)"](idx)
    whole = stats["Grounding IoU (anatomy, mean-mask baseline)"](idx)
    assert 0 < lungs <= 1 and 0 < whole < 1  # the whole film is not the lungs
    assert stats["ECE No Finding"](idx) >= 0
