"""Ground-truth consistency of the phantom generator: image, findings, labels and report agree."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from radreport.data.benchmark import BENCHMARK_SPLITS, benchmark_split
from radreport.data.labels import CHEXPERT_LABELS, NEGATIVE, POSITIVE, label_vector
from radreport.data.phantoms import PhantomStudy, generate_study
from radreport.data.phantoms.findings import LOBES
from radreport.data.phantoms.reports import count_tokens
from radreport.data.phantoms.study import mask_box

CONSISTENCY_SEEDS = range(100, 160)
LOBE_NAMES = {side: {name for name, _, _ in lobes} for side, lobes in LOBES.items()}
REQUIRED_KINDS = {"cardiomegaly", "enlarged_cardiomediastinum", "pleural_effusion",
                  "pneumothorax", "nodule", "mass", "consolidation", "atelectasis", "edema",
                  "rib_fracture", "ett", "central_line", "pacemaker"}


@pytest.fixture(scope="module")
def studies() -> list[PhantomStudy]:
    return [generate_study(seed, 256) for seed in CONSISTENCY_SEEDS]


@pytest.fixture(scope="module")
def population() -> list[PhantomStudy]:
    return [generate_study(seed, 256) for seed in range(1000, 1400)]


def test_same_seed_same_study() -> None:
    a, b = generate_study(7, 256), generate_study(7, 256)
    assert np.array_equal(a.image, b.image)
    assert a.report_text == b.report_text
    assert [f.box for f in a.findings] == [f.box for f in b.findings]
    c = generate_study(8, 256)
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("size", [256, 333, 1024, 2048])
def test_any_size_from_256_to_2048(size: int) -> None:
    study = generate_study(3, size)
    assert study.image.shape == (size, size)
    assert study.image.dtype == np.float32
    assert float(study.image.min()) >= 0.0 and float(study.image.max()) <= 1.0
    for finding in study.findings:
        assert finding.mask.shape == (size, size)
    assert 380 <= study.pixel_spacing_mm * size <= 431  # a real detector's field of view


@pytest.mark.parametrize("size", [255, 2049, 0])
def test_sizes_outside_range_are_refused(size: int) -> None:
    with pytest.raises(ValueError, match="between 256 and 2048"):
        generate_study(0, size)


def test_same_study_at_two_sizes_has_the_same_findings() -> None:
    small, large = generate_study(11, 256), generate_study(11, 1024)
    assert [f.kind for f in small.findings] == [f.kind for f in large.findings]
    assert small.report_text == large.report_text
    for fs, fl in zip(small.findings, large.findings, strict=True):
        assert np.allclose(np.array(fs.box) * 4, fl.box, atol=4 * 4)


def test_every_positive_finding_is_reported(studies: list[PhantomStudy]) -> None:
    for study in studies:
        stated = {i for s in study.sentences if s.section == "findings"
                  for i in s.finding_indices}
        assert stated == set(range(len(study.findings))), study.report_text
        for i, finding in enumerate(study.findings):
            sentence = next(s for s in study.sentences if i in s.finding_indices)
            assert all(sentence.mentions.get(label) == POSITIVE for label in finding.labels)


def test_positive_sentences_have_their_findings_region(studies: list[PhantomStudy]) -> None:
    for study in studies:
        for sentence in study.sentences:
            if not sentence.finding_indices:
                continue
            union = np.zeros_like(sentence.mask)
            for i in sentence.finding_indices:
                union |= study.findings[i].mask
            assert sentence.mask.any()
            assert np.array_equal(sentence.mask, union)
            assert sentence.region == "lesion"


def test_negatives_never_get_a_lesion_region(studies: list[PhantomStudy]) -> None:
    for study in studies:
        for sentence in study.sentences:
            if sentence.finding_indices:
                continue
            assert sentence.region in study.anatomy, sentence.text
            assert np.array_equal(sentence.mask, study.anatomy[sentence.region])
            assert all(v != POSITIVE for k, v in sentence.mentions.items() if k != "No Finding")
            for label, value in sentence.mentions.items():
                if value == NEGATIVE:
                    assert study.labels[label] == NEGATIVE, (label, study.report_text)


def test_labels_boxes_and_masks_agree(studies: list[PhantomStudy]) -> None:
    for study in studies:
        positives = {label for f in study.findings for label in f.labels}
        assert study.labels == label_vector(positives)
        assert set(study.labels) == set(CHEXPERT_LABELS)
        for finding in study.findings:
            assert finding.mask.any()
            assert finding.box == mask_box(finding.mask)
            x0, y0, x1, y1 = finding.box
            assert 0 <= x0 < x1 <= study.size and 0 <= y0 < y1 <= study.size
            assert finding.labels[0] in CHEXPERT_LABELS
        no_finding = study.labels["No Finding"] == POSITIVE
        pathology = [f for f in study.findings if f.label != "Support Devices"]
        assert no_finding == (not pathology)


def test_findings_carry_location_and_severity(studies: list[PhantomStudy]) -> None:
    for study in studies:
        for f in study.findings:
            if f.kind in ("pleural_effusion", "pneumothorax"):
                assert f.side in ("left", "right") and f.severity in ("small", "moderate",
                                                                       "large")
            if f.kind in ("nodule", "mass"):
                assert f.size_cm is not None and f.location in LOBE_NAMES[str(f.side)]
                assert (f.size_cm < 3.0) == (f.kind == "nodule")
                assert f.attributes["zone"] in {f"{f.side} {z} zone" for z in ("upper", "mid",
                                                                               "lower")}
                # the stated size matches the drawn lesion within a third (lobulated masses)
                diameter_mm = 2 * np.sqrt(f.mask.sum() / np.pi) * study.pixel_spacing_mm
                assert abs(diameter_mm / 10 - f.size_cm) < f.size_cm / 3, (diameter_mm, f.size_cm)
            if f.kind == "consolidation":
                assert f.location in LOBE_NAMES[str(f.side)]
                assert (f.mask & ~study.anatomy[f"lung_{f.side}"]).sum() == 0


def test_reports_look_like_real_ones(studies: list[PhantomStudy]) -> None:
    for study in studies:
        assert study.findings_text and study.impression_text
        sections = [s.section for s in study.sentences]
        assert sections == sorted(sections)  # all FINDINGS sentences come before IMPRESSION
        assert 50 <= count_tokens(study.report_text) <= 150, study.report_text
        assert all(s.text.endswith(".") and (s.text[0].isupper() or s.text[0].isdigit())
                   for s in study.sentences)
        if not study.findings:
            assert "pneumothorax" in study.findings_text.lower()  # pertinent negatives


def test_prevalence_and_co_occurrence(population: list[PhantomStudy]) -> None:
    kinds = Counter(f.kind for s in population for f in s.findings)
    assert set(kinds) >= REQUIRED_KINDS, REQUIRED_KINDS - set(kinds)
    normal = sum(not s.findings for s in population) / len(population)
    assert 0.2 <= normal <= 0.4
    with_edema = [s for s in population if any(f.kind == "edema" for f in s.findings)]
    cardiomegaly_given_edema = np.mean([any(f.kind == "cardiomegaly" for f in s.findings)
                                        for s in with_edema])
    base_rate = kinds["cardiomegaly"] / len(population)
    assert cardiomegaly_given_edema > 2 * base_rate  # heart failure travels together
    sides = Counter(f.side for s in population for f in s.findings if f.kind == "pleural_effusion")
    assert sides["left"] > 0 and sides["right"] > 0


def test_anatomy_is_plausible(studies: list[PhantomStudy]) -> None:
    for study in studies[:20]:
        a = study.anatomy
        right_x = np.nonzero(a["lung_right"])[1].mean()
        left_x = np.nonzero(a["lung_left"])[1].mean()
        assert right_x < study.size / 2 < left_x  # patient's right lung on image left
        clear = a["lungs"].copy()
        for f in study.findings:
            clear &= ~f.mask
        assert study.image[clear].mean() < study.image[a["heart"]].mean() - 0.1
        assert study.image[clear].mean() < study.image[a["mediastinum"]].mean()
        assert not (a["lungs"] & a["heart"]).any()


def test_findings_change_the_pixels_they_claim() -> None:
    seen = 0
    for seed in range(2000, 2300):
        study = generate_study(seed, 256)
        effusions = [f for f in study.findings if f.kind == "pleural_effusion"]
        if len(effusions) != 1:
            continue
        side = effusions[0].side
        other = "left" if side == "right" else "right"
        fluid = effusions[0].mask
        mirrored = study.anatomy[f"lung_{other}"] & np.fliplr(fluid)
        if mirrored.sum() < 50 or any(f.mask[mirrored].any() for f in study.findings):
            continue
        assert study.image[fluid].mean() > study.image[mirrored].mean() + 0.05
        seen += 1
    assert seen >= 3


def test_benchmark_split_is_fixed_and_disjoint() -> None:
    assert [(s.name, s.count) for s in BENCHMARK_SPLITS] == [
        ("train", 20_000), ("validate", 1_000), ("test", 1_000)]
    seeds = [set(s.seeds) for s in BENCHMARK_SPLITS]
    assert not (seeds[0] & seeds[1] or seeds[0] & seeds[2] or seeds[1] & seeds[2])
    assert benchmark_split("test").first_seed == 2_000_000
    with pytest.raises(ValueError):
        benchmark_split("dev")
