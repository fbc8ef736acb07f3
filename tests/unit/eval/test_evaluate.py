"""Scoring helpers of ``radreport evaluate``: test cases and sentence pairing."""

from __future__ import annotations

import numpy as np

from radreport.data.labels import CHEXPERT_LABELS
from radreport.eval.evaluate import pair_sentences, render_case, split_seeds, stated_findings
from radreport.model.grounding import Letterbox
from radreport.model.report import DraftReport, ReportSentence


def test_split_seeds_are_the_benchmark_test_split() -> None:
    assert split_seeds() == range(2_000_000, 2_001_000)
    assert split_seeds("validate", 3) == range(1_000_000, 1_000_003)


def test_render_case_keeps_truth_and_positive_regions() -> None:
    case = next(c for c in (render_case(seed) for seed in range(2_000_000, 2_000_050))
                if c.positives)
    assert case.image.shape == (512, 512) and case.image.dtype == np.float32
    assert case.report.startswith("FINDINGS: ") and "\n\nIMPRESSION: " in case.report
    assert len(case.labels) == len(CHEXPERT_LABELS) and case.labels[0] == 0
    for ref in case.positives:
        assert ref.labels and ref.mask.any() and ref.mask.shape == (512, 512)


def test_stated_findings_skip_negatives_and_close_parents() -> None:
    assert stated_findings("No pleural effusion.") == frozenset()
    assert stated_findings("There is consolidation in the left lower lobe.") == {
        "Consolidation", "Lung Opacity"}
    assert stated_findings("Small right pleural effusion.") == {"Pleural Effusion"}


def test_generated_sentences_pair_with_the_reference_sentence_of_their_finding() -> None:
    case = next(c for c in (render_case(seed) for seed in range(2_000_000, 2_000_200))
                if {"Pleural Effusion"} in [set(r.labels) for r in c.positives])
    effusion = next(r for r in case.positives if set(r.labels) == {"Pleural Effusion"})

    def sentence(text: str, section: str = "findings") -> ReportSentence:
        return ReportSentence(text, section, np.full((4, 4), 1 / 16, np.float32), [])

    draft = DraftReport(
        findings="", impression="",
        sentences=[sentence("Small left pleural effusion."), sentence("No pneumothorax."),
                   sentence("There is a large pneumothorax."),  # invented: not scored
                   sentence("Heart size is normal.")],
        label_probs={}, token_ids=[], letterbox=Letterbox.fit((512, 512), 256),
        model_version="test:0")
    expect_pneumothorax = any("Pneumothorax" in r.labels for r in case.positives)
    pairs = pair_sentences(draft, case)
    assert len(pairs) == 1 + expect_pneumothorax
    assert pairs[0][1] is effusion.mask
