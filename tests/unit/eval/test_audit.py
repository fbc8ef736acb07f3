"""radreport audit fairness and errors on a small phantom test subset with the shipped model:
overall figures are radreport evaluate's own (same studies, same resamples), groups partition
the studies, a constructed gap is flagged, and the HTML page shows TP/FP/FN overlays."""

from __future__ import annotations

import base64
import io
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from radreport.cli import app
from radreport.data.labels import CHEXPERT_LABELS
from radreport.eval.audit import MAIN_SYSTEM, AuditData, analyse, classify_sentences, collect
from radreport.eval.errors import summarise
from radreport.eval.errors_report import audit_errors
from radreport.eval.evaluate import Evaluation, render_case, score
from radreport.eval.fairness import (
    AGE_BINS,
    Demographics,
    age_group,
    audit,
    fairness_statistics,
    partition,
    phantom_demographics,
)
from radreport.eval.fairness_report import audit_fairness
from radreport.eval.labeler import report_vector
from radreport.eval.metrics import CLINICAL_METRICS, Statistic, clinical_scores, label_matrix
from radreport.model.grounding import Letterbox
from radreport.model.report import DEFAULT_MODEL_DIR, DraftReport, ReportSentence

STUDIES = 24
RESAMPLES = 20
SHARED = (*CLINICAL_METRICS, "Grounding IoU", "Pointing game", "Review-flag rate",
          "OOD flag rate")


@pytest.fixture(scope="module")
def data() -> AuditData:
    return collect(DEFAULT_MODEL_DIR, "test", STUDIES)


@pytest.fixture(scope="module")
def evaluation(data: AuditData) -> Evaluation:
    """What ``radreport evaluate`` computes for its main system on the same studies."""
    return score([data.run], data.cases, RESAMPLES)


def test_overall_figures_are_radreport_evaluates(data: AuditData, evaluation: Evaluation) -> None:
    stats = fairness_statistics(data)
    result = audit(stats, partition(phantom_demographics(data)), STUDIES, RESAMPLES)
    for metric in SHARED:
        np.testing.assert_equal(result.overall[metric], evaluation.rows[MAIN_SYSTEM][metric])
    summary = summarise(data)
    rows = evaluation.rows[MAIN_SYSTEM]
    assert summary.grounding_iou == pytest.approx(rows["Grounding IoU"][0], abs=1e-12)
    assert summary.pointing == pytest.approx(rows["Pointing game"][0], abs=1e-12)
    assert summary.tp_sentences == evaluation.grounded_sentences[MAIN_SYSTEM]


def test_groups_partition_the_studies_by_their_own_sex_and_age(data: AuditData) -> None:
    groups = partition(phantom_demographics(data))
    assert set(groups) == {"sex", "age group"}  # phantoms record no race
    for members in groups.values():
        assert sorted(np.concatenate(list(members.values())).tolist()) == list(range(STUDIES))
    for sex, ix in groups["sex"].items():
        assert {data.cases[i].context.sex for i in ix} == {sex}
    for name, ix in groups["age group"].items():
        assert {age_group(data.cases[i].context.age_years) for i in ix} == {name}


def test_age_bins_and_unknown_group() -> None:
    assert [age_group(a) for a in (18, 39, 40, 59, 60, 79, 80, 101, None)] == [
        "<40", "<40", "40-59", "40-59", "60-79", "60-79", ">=80", ">=80", "unknown"]
    assert [name for name, _, _ in AGE_BINS] == ["<40", "40-59", "60-79", ">=80"]
    groups = partition([Demographics("F", 30, "Asian"), Demographics(None, None, None),
                        Demographics("M", 85, "White")])
    assert {k: v.tolist() for k, v in groups["race/ethnicity"].items()} == {
        "Asian": [0], "White": [2], "unknown": [1]}
    assert groups["sex"]["unknown"].tolist() == [1]


def test_a_group_value_is_the_metric_on_that_group_alone(data: AuditData) -> None:
    groups = partition(phantom_demographics(data))
    result = audit(fairness_statistics(data), groups, STUDIES, RESAMPLES)
    ref = np.array([c.labels for c in data.cases])
    hyp = label_matrix([report_vector(d.text) for d in data.drafts])
    for sex, ix in groups["sex"].items():
        own = clinical_scores(ref[ix], hyp[ix])["Clinical F1 (micro)"](np.arange(len(ix)))
        assert result.groups["sex"][sex]["Clinical F1 (micro)"][0] == pytest.approx(own)


def test_a_constructed_gap_is_flagged_and_an_equal_metric_is_not() -> None:
    rng = np.random.default_rng(1)
    n = 400
    people = [Demographics("F" if i % 2 else "M", 30 + 20 * (i % 4)) for i in range(n)]
    sex = np.array([p.sex == "F" for p in people])
    worse = np.where(sex, rng.random(n) < 0.6, rng.random(n) < 0.9).astype(float)
    same = (rng.random(n) < 0.75).astype(float)
    oldest = np.array([p.age == 90 for p in people])

    def mean_of(values: np.ndarray) -> Statistic:
        return lambda idx: float(values[idx].mean())

    stats = {"Sensitivity": mean_of(worse), "Clinical F1 (micro)": mean_of(same),
             "Pointing game": mean_of(np.where(oldest, 0.5, 1.0))}
    result = audit(stats, partition(people), n, resamples=200, margin=0.05)
    spread = next(g for g in result.spreads if g.attribute == "sex" and g.metric == "Sensitivity")
    assert (spread.group, spread.versus) == ("M", "F")
    assert spread.gap[0] == pytest.approx(0.3, abs=0.08) and spread.flagged and spread.significant
    assert not any(g.flagged for g in result.spreads if g.metric == "Clinical F1 (micro)"
                   and g.attribute == "sex")
    old = next(g for g in result.gaps if g.group == ">=80" and g.metric == "Pointing game")
    assert old.gap == pytest.approx((-0.5, -0.5, -0.5)) and old.flagged and old.significant
    assert old in result.flagged


def test_fairness_report_is_written(data: AuditData, tmp_path: Path) -> None:
    result = audit_fairness(data, tmp_path, resamples=RESAMPLES)
    page = (tmp_path / "fairness.md").read_text()
    for heading in ("## By sex", "## By age group", "## Flagged gaps", "## All studies"):
        assert heading in page
    plots = re.findall(r"!\[[^]]*\]\(([^)]+\.png)\)", page)
    assert {"fairness_sex.png", "fairness_age_group.png", "fairness_sentences.png"} <= set(plots)
    for name in plots:
        assert Image.open(tmp_path / name).size[0] > 200
    saved = json.loads((tmp_path / "fairness.json").read_text())
    assert saved["overall"]["Clinical F1 (micro)"] == list(result.overall["Clinical F1 (micro)"])
    assert saved["sizes"]["sex"] == {k: len(v) for k, v in
                                     partition(phantom_demographics(data))["sex"].items()}


def _section_images(page: str, key: str) -> list[bytes]:
    section = page.split(f"<h2 id='{key}'>")[1].split("<h2")[0]
    return [base64.b64decode(b) for b in re.findall(r"base64,([A-Za-z0-9+/=]+)", section)]


def test_error_page_has_overlays_of_tp_fp_and_fn(data: AuditData, tmp_path: Path) -> None:
    """The shipped model (0.4.0) makes no error on these 24 studies, so each real draft is
    scored against the next study's truth: false positives and misses on purpose."""
    drafts, hypotheses = data.run.drafts, data.run.hypotheses
    run = replace(data.run, drafts=drafts[1:] + drafts[:1],
                  hypotheses=hypotheses[1:] + hypotheses[:1])
    summary = audit_errors(analyse(data.split, data.cases, run), tmp_path, per_kind=2)
    assert summary.tp_sentences and summary.fp_sentences and summary.missed
    page = (tmp_path / "errors.html").read_text()
    for key in ("tp", "fp", "fn"):
        images = _section_images(page, key)
        assert len(images) == 2
        overlay = Image.open(io.BytesIO(images[0])).convert("RGB")
        pixels = np.asarray(overlay, dtype=int)
        assert (np.abs(pixels[..., 0] - pixels[..., 2]) > 60).any()  # heat or box in colour
    saved = json.loads((tmp_path / "errors.json").read_text())
    assert saved["tp_sentences"] == summary.tp_sentences
    assert {r["finding"] for r in saved["findings"]} >= {"Lung Opacity"}


def test_sentence_classes_follow_their_definitions() -> None:
    case = next(c for c in (render_case(s) for s in range(2_000_000, 2_000_200))
                if {"Pleural Effusion"} in [set(r.labels) for r in c.positives]
                and not c.labels[CHEXPERT_LABELS.index("Pneumothorax")])
    effusion = next(r for r in case.positives if set(r.labels) == {"Pleural Effusion"})
    grid = 16
    cell = effusion.mask.shape[0] // grid
    inside = np.argwhere(effusion.mask[cell // 2::cell, cell // 2::cell])[0]
    outside = np.argwhere(~np.logical_or.reduce([r.mask for r in case.positives])
                          [cell // 2::cell, cell // 2::cell])[0]

    def peaked(at: np.ndarray) -> np.ndarray:
        heat = np.full((grid, grid), 1e-4, np.float32)
        heat[tuple(at)] = 1.0
        return heat / heat.sum()

    draft = DraftReport(
        findings="", impression="", label_probs={}, token_ids=[],
        letterbox=Letterbox.fit(case.image.shape, 256), model_version="test:0",
        sentences=[ReportSentence("Small pleural effusion.", "findings", peaked(outside), []),
                   ReportSentence("There is a pneumothorax.", "findings", peaked(inside), []),
                   ReportSentence("No pneumothorax.", "findings", peaked(inside), [])])
    tp, fp = classify_sentences(0, draft, case)
    assert (tp.kind, tp.hit) == ("TP", False)  # text right, attention wrong
    assert tp.reference is not None and tp.reference.labels == effusion.labels
    assert (fp.kind, fp.hit) == ("FP", True)  # attention right, text wrong
    assert fp.stated == {"Pneumothorax"}


def test_cli_commands_write_their_reports(tmp_path: Path) -> None:
    runner = CliRunner()
    fair = runner.invoke(app, ["audit", "fairness", "--limit", "4", "--resamples", "5",
                               "--workers", "1", "--out", str(tmp_path / "f")])
    assert fair.exit_code == 0, fair.output
    assert (tmp_path / "f" / "fairness.md").is_file() and "4 studies" in fair.output
    errs = runner.invoke(app, ["audit", "errors", "--limit", "4", "--workers", "1",
                               "--out", str(tmp_path / "e")])
    assert errs.exit_code == 0, errs.output
    assert (tmp_path / "e" / "errors.html").is_file()
    bad = runner.invoke(app, ["audit", "errors", "--split", "nope", "--out", str(tmp_path)])
    assert bad.exit_code != 0
