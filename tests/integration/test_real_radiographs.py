"""The shipped model (v2) on real radiographs it never saw: the OOD gate must say so.

The model is trained on synthetic phantoms only. pydicom-data ships two real computed
radiographs: a PA chest CR (RG1) and an extremity CR (RG3). Both are decoded as the
preprocessing stage decodes a PACS push, and drafted as the inference stage drafts them.
Both must be reported (nothing objectively refuses them) and flagged for review as outside
the training distribution, with no calibrated confidence; phantom studies must not be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from radreport.data.phantoms.generator import generate_study
from radreport.model.report import DEFAULT_MODEL_DIR, DraftReport, ReportGenerator
from radreport.model.safety import OOD_REASON, model_review_reasons
from services.preprocess.imaging import check_chest_radiograph, load_image, prepare_for_model


@pytest.fixture(scope="module")
def generator() -> ReportGenerator:
    generator = ReportGenerator(DEFAULT_MODEL_DIR)
    if generator.safety_net.ood is None:
        pytest.fail("the shipped model has no OOD gate (calibration.json)")
    return generator


def draft_of(generator: ReportGenerator, path: Path | str) -> DraftReport:
    decoded = load_image(path, model_side=generator.info.image_size)
    check_chest_radiograph(decoded.metadata)  # the header says chest: nothing refuses it
    model_input, letterbox = prepare_for_model(decoded, generator.info.image_size)
    return generator.generate_prepared(model_input[None, None], [letterbox])[0]


def reasons_of(draft: DraftReport) -> list[str]:
    assert draft.safety is not None
    s = draft.safety
    return model_review_reasons(s.findings_present, s.uncertain_findings,
                                s.out_of_distribution, [])


def test_a_real_chest_cr_is_reported_and_flagged(generator: ReportGenerator) -> None:
    path = get_testdata_file("RG1_UNCI.dcm")
    assert path is not None
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert (header.Modality, header.BodyPartExamined) == ("CR", "CHEST")
    draft = draft_of(generator, path)
    assert draft.sentences  # still reported
    assert draft.safety is not None and draft.safety.out_of_distribution
    assert draft.safety.calibrated_confidence == 0.0
    assert OOD_REASON in reasons_of(draft)


def test_a_non_chest_radiograph_with_a_chest_header_is_flagged(
        generator: ReportGenerator, tmp_path: Path) -> None:
    source = get_testdata_file("RG3_UNCI.dcm")
    assert source is not None
    ds = pydicom.dcmread(source)
    assert ds.BodyPartExamined == "EXTREMITY"
    ds.BodyPartExamined = "CHEST"  # a mislabelled study, as PACS sometimes sends
    relabelled = tmp_path / "extremity_as_chest.dcm"
    ds.save_as(relabelled)
    draft = draft_of(generator, relabelled)
    assert draft.safety is not None and draft.safety.out_of_distribution


def test_phantom_studies_are_not_flagged(generator: ReportGenerator) -> None:
    images = [generate_study(seed, 512).image for seed in range(2_000_000, 2_000_008)]
    drafts = generator.generate(images)
    flagged = [d.safety is not None and d.safety.out_of_distribution for d in drafts]
    assert np.mean(flagged) <= 0.25, flagged  # about 1% by calibration; 8 studies here
