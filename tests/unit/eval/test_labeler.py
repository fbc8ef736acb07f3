"""The rule-based CheXpert-style labeler: hand-written sentences, reports, phantom agreement."""

from __future__ import annotations

import pytest

from radreport.data.labels import (
    CHEXPERT_LABELS,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    LabelVector,
    label_vector,
)
from radreport.data.phantoms import PhantomStudy, generate_study
from radreport.eval import label_report, label_sentence, report_vector
from radreport.eval.labeler import close_parents, split_sentences

P, N, U = POSITIVE, NEGATIVE, UNCERTAIN

SENTENCES: list[tuple[str, LabelVector]] = [
    # cardiomegaly and heart size
    ("There is mild cardiomegaly.", {"Cardiomegaly": P}),
    ("The heart is moderately enlarged.", {"Cardiomegaly": P}),
    ("Enlarged cardiac silhouette.", {"Cardiomegaly": P}),
    ("Stable enlargement of the cardiac silhouette.", {"Cardiomegaly": P}),
    ("Heart size is normal.", {"Cardiomegaly": N}),
    ("The heart is not enlarged.", {"Cardiomegaly": N}),
    ("Normal heart size.", {"Cardiomegaly": N}),
    ("The cardiac silhouette is within normal limits.", {"Cardiomegaly": N}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": N}),
    ("Borderline cardiomegaly.", {"Cardiomegaly": U}),
    ("Heart size is unchanged from the prior study.", {"Cardiomegaly": U}),
    ("Stable cardiomegaly.", {"Cardiomegaly": P}),
    # mediastinum
    ("The mediastinum is widened.", {"Enlarged Cardiomediastinum": P}),
    ("Widening of the superior mediastinum is new.", {"Enlarged Cardiomediastinum": P}),
    ("The cardiomediastinal silhouette is enlarged.", {"Enlarged Cardiomediastinum": P}),
    ("Normal cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": N}),
    ("The mediastinum is not widened.", {"Enlarged Cardiomediastinum": N}),
    ("Cardiac and mediastinal contours are normal.",
     {"Cardiomegaly": N, "Enlarged Cardiomediastinum": N}),
    # lung opacity, consolidation, pneumonia, atelectasis
    ("Patchy opacity in the right lower lobe.", {"Lung Opacity": P}),
    ("Right upper lobe infiltrate.", {"Lung Opacity": P}),
    ("The lungs are clear.", {"Lung Opacity": N, "Consolidation": N}),
    ("Lungs are clear except for mild bibasilar atelectasis.",
     {"Lung Opacity": N, "Consolidation": N, "Atelectasis": P}),
    ("Right upper lobe consolidation consistent with pneumonia.",
     {"Consolidation": P, "Pneumonia": P}),
    ("Airspace consolidation in the lingula compatible with pneumonia.",
     {"Consolidation": P, "Pneumonia": P}),
    ("Left lower lobe consolidation concerning for pneumonia.",
     {"Consolidation": P, "Pneumonia": U}),
    ("Bibasilar opacities may represent atelectasis or pneumonia.",
     {"Lung Opacity": P, "Atelectasis": U, "Pneumonia": U}),
    ("Left retrocardiac opacity, atelectasis versus pneumonia.",
     {"Lung Opacity": P, "Atelectasis": U, "Pneumonia": U}),
    ("Right lower lobe opacity likely reflects atelectasis.",
     {"Lung Opacity": P, "Atelectasis": U}),
    ("Pneumonia cannot be excluded.", {"Pneumonia": U}),
    ("Cannot exclude early pneumonia in the appropriate clinical setting.", {"Pneumonia": U}),
    ("Superimposed infection is not excluded.", {"Pneumonia": U}),
    ("No focal consolidation to suggest pneumonia.", {"Consolidation": N, "Pneumonia": N}),
    ("No new focal consolidation.", {"Consolidation": U}),
    ("Left lower lobe collapse.", {"Atelectasis": P}),
    ("The right hemidiaphragm is elevated with adjacent atelectasis.", {"Atelectasis": P}),
    ("Atelectasis is likely.", {"Atelectasis": U}),
    # pleura
    ("Small bilateral pleural effusions.", {"Pleural Effusion": P}),
    ("No pleural effusion or pneumothorax.", {"Pleural Effusion": N, "Pneumothorax": N}),
    ("No focal consolidation, pleural effusion, or pneumothorax.",
     {"Consolidation": N, "Pleural Effusion": N, "Pneumothorax": N}),
    ("There is no evidence of pneumothorax.", {"Pneumothorax": N}),
    ("Pneumothorax is not seen.", {"Pneumothorax": N}),
    ("The previously seen left pleural effusion has resolved.", {"Pleural Effusion": N}),
    ("No pneumothorax, but there is a small left pleural effusion.",
     {"Pneumothorax": N, "Pleural Effusion": P}),
    ("No effusion; small right apical pneumothorax.",
     {"Pleural Effusion": N, "Pneumothorax": P}),
    ("No change in the small left pleural effusion.", {"Pleural Effusion": P}),
    ("Possible small right pleural effusion.", {"Pleural Effusion": U}),
    ("Blunting of the right costophrenic angle.", {"Pleural Effusion": U}),
    ("A small left pleural effusion is present, with blunting of the left costophrenic angle.",
     {"Pleural Effusion": P}),
    ("Costophrenic angles are sharp.", {"Pleural Effusion": N}),
    ("No pericardial effusion.", {}),
    ("Trace left pleural effusion versus pleural thickening.",
     {"Pleural Effusion": U, "Pleural Other": U}),
    ("Pleural thickening at the left apex.", {"Pleural Other": P}),
    ("Calcified pleural plaques are consistent with prior asbestos exposure.",
     {"Pleural Other": P}),
    ("Large right pneumothorax with mediastinal shift.", {"Pneumothorax": P}),
    ("A moderate left pneumothorax is seen, with a visible pleural line.",
     {"Pneumothorax": P}),
    # edema
    ("Moderate interstitial pulmonary edema.", {"Edema": P}),
    ("Mild pulmonary vascular congestion.", {"Edema": U}),
    ("There is no pulmonary vascular congestion or edema.", {"Edema": N}),
    ("Findings consistent with congestive heart failure.", {"Edema": P, "Cardiomegaly": U}),
    ("Perihilar opacities consistent with mild pulmonary edema.",
     {"Lung Opacity": P, "Edema": P}),
    # lung lesion
    ("There is a 2.1 cm nodule in the right upper lobe.", {"Lung Lesion": P}),
    ("Spiculated mass in the left hilum.", {"Lung Lesion": P}),
    ("No suspicious pulmonary nodules or masses.", {"Lung Lesion": N}),
    ("Calcified granuloma in the left upper lobe.", {}),
    ("Pulmonary nodule is not well visualized on this study.", {"Lung Lesion": U}),
    # fracture
    ("No acute osseous abnormality.", {"Fracture": N}),
    ("The osseous structures are intact.", {"Fracture": N}),
    ("Acute fracture of the left sixth rib.", {"Fracture": P}),
    ("Old healed right rib fractures.", {"Fracture": P}),
    ("No displaced rib fracture is identified.", {"Fracture": N}),
    # support devices
    ("Endotracheal tube terminates 4 cm above the carina.", {"Support Devices": P}),
    ("ET tube in standard position.", {"Support Devices": P}),
    ("Right internal jugular central venous catheter tip in the mid SVC.",
     {"Support Devices": P}),
    ("Left PICC line tip in the lower SVC.", {"Support Devices": P}),
    ("Enteric tube courses below the diaphragm.", {"Support Devices": P}),
    ("Median sternotomy wires are intact.", {"Support Devices": P}),
    ("Left-sided pacemaker with leads in the right atrium and right ventricle.",
     {"Support Devices": P}),
    ("Interval removal of the endotracheal tube.", {"Support Devices": N}),
    ("There is no pneumothorax and the endotracheal tube is in standard position.",
     {"Pneumothorax": N, "Support Devices": P}),
    # several findings in one sentence, and sentences that state no label
    ("Mild bibasilar atelectasis and small bilateral effusions.",
     {"Atelectasis": P, "Pleural Effusion": P}),
    ("Subsegmental atelectasis at the left lung base without pleural effusion.",
     {"Atelectasis": P, "Pleural Effusion": N}),
    ("Heart size is normal, no pleural effusion.", {"Cardiomegaly": N, "Pleural Effusion": N}),
    ("No acute cardiopulmonary process.", {}),
    ("No acute cardiopulmonary abnormality.", {}),
    ("The visualized upper abdomen is unremarkable.", {}),
    ("Both hemidiaphragms are well defined.", {}),
]


@pytest.mark.parametrize(("text", "expected"), SENTENCES, ids=[t for t, _ in SENTENCES])
def test_label_sentence(text: str, expected: LabelVector) -> None:
    assert label_sentence(text) == expected


def test_sentences_cover_every_label_but_no_finding() -> None:
    covered = {label for _, expected in SENTENCES for label in expected}
    assert covered == set(CHEXPERT_LABELS) - {"No Finding"}
    assert len(SENTENCES) >= 60


# --- reports -------------------------------------------------------------------------------

NORMAL_REPORT = ("FINDINGS: The lungs are clear. No pleural effusion or pneumothorax. Heart size "
                 "is normal. No acute osseous abnormality.\n\nIMPRESSION: No acute "
                 "cardiopulmonary process.")


def test_split_sentences_keeps_decimals_and_drops_indication() -> None:
    text = ("INDICATION: Evaluate for pneumonia.\nFINDINGS: A 2.5 cm nodule vs. mass is seen. "
            "No effusion.\n\nIMPRESSION: 1. Nodule.")
    assert split_sentences(text) == ["a 2.5 cm nodule vs mass is seen", "no effusion", "1",
                                     "nodule"]
    assert "Pneumonia" not in label_report(text)


def test_normal_report_is_no_finding() -> None:
    labels = label_report(NORMAL_REPORT)
    assert labels == {"No Finding": P, "Lung Opacity": N, "Consolidation": N,
                      "Pleural Effusion": N, "Pneumothorax": N, "Cardiomegaly": N,
                      "Fracture": N}
    assert report_vector(NORMAL_REPORT) == label_vector(set())


def test_positive_beats_negative_and_uncertain_beats_negative() -> None:
    labels = label_report("No right pleural effusion. Small left pleural effusion. "
                          "No pneumonia on the right. Possible left lower lobe pneumonia.")
    assert labels["Pleural Effusion"] == P
    assert labels["Pneumonia"] == U
    assert "No Finding" not in labels


def test_positive_beats_uncertain() -> None:
    labels = label_report("Possible small pneumothorax. IMPRESSION: Small left pneumothorax.")
    assert labels["Pneumothorax"] == P


def test_devices_alone_are_still_no_finding() -> None:
    text = "Endotracheal tube 4 cm above the carina. The lungs are clear. No pneumothorax."
    labels = label_report(text)
    assert labels["Support Devices"] == P
    assert labels["No Finding"] == P


def test_uncertain_pathology_is_not_no_finding() -> None:
    text = "Heart size is normal. Pneumonia cannot be excluded."
    assert "No Finding" not in label_report(text)
    vector = report_vector(text)
    assert vector["No Finding"] == 0
    assert vector["Pneumonia"] == 1  # uncertain counts as positive
    assert vector["Lung Opacity"] == 1  # and closes into its parent


@pytest.mark.parametrize(("text", "opacity"), [
    ("Mild pulmonary edema.", P),
    ("Left lower lobe consolidation.", P),
    ("Possible right middle lobe pneumonia.", U),
    ("The lungs are clear. Mild bibasilar atelectasis.", P),
    ("A 1.2 cm nodule in the right upper lobe.", P),
    ("No pulmonary edema.", None),
])
def test_parent_closure_into_lung_opacity(text: str, opacity: int | None) -> None:
    assert label_report(text).get("Lung Opacity") == opacity


def test_close_parents_keeps_positive_parent() -> None:
    assert close_parents({"Atelectasis": U, "Lung Opacity": P}) == {"Atelectasis": U,
                                                                     "Lung Opacity": P}
    assert close_parents({"Edema": N}) == {"Edema": N}


def test_report_vector_matches_label_vector() -> None:
    text = ("FINDINGS: Right subclavian catheter terminates in the SVC. Moderate pulmonary edema. "
            "Small bilateral pleural effusions. No pneumothorax. The heart is mildly enlarged."
            "\n\nIMPRESSION: Mild pulmonary edema and cardiomegaly.")
    expected = label_vector({"Support Devices", "Edema", "Pleural Effusion", "Cardiomegaly"})
    assert report_vector(text) == expected
    assert list(report_vector(text)) == list(CHEXPERT_LABELS)


# --- agreement with phantom ground truth ---------------------------------------------------

PHANTOM_SEEDS = range(300)

# CheXpert reads these as uncertain; the phantom marks the finding positive. Binary
# evaluation agrees, since report_vector counts uncertain as positive.
UNCERTAIN_PHRASINGS = ("concerning for", "likely reflects")


@pytest.fixture(scope="module")
def phantoms() -> list[PhantomStudy]:
    return [generate_study(seed, 256) for seed in PHANTOM_SEEDS]


def test_report_vector_equals_phantom_labels(phantoms: list[PhantomStudy]) -> None:
    wrong = [(s.seed, {k: (v, s.labels[k]) for k, v in report_vector(s.report_text).items()
                       if v != s.labels[k]})
             for s in phantoms if report_vector(s.report_text) != s.labels]
    assert not wrong, f"(seed, {{label: (labeler, truth)}}): {wrong}"


def _sentence_disagreements(study: PhantomStudy) -> list[tuple[str, str, int, int | None]]:
    out = []
    for sentence in study.sentences:
        got = close_parents(label_sentence(sentence.text))
        truth = {k: v for k, v in sentence.mentions.items() if k != "No Finding"}
        for label, value in truth.items():
            hedged = (value == P and got.get(label) == U
                      and any(p in sentence.text for p in UNCERTAIN_PHRASINGS))
            if got.get(label) != value and not hedged:
                out.append((sentence.text, label, value, got.get(label)))
        out += [(sentence.text, label, NEGATIVE, v) for label, v in got.items()
                if label not in truth and v != NEGATIVE]
    return out


def test_sentences_agree_with_phantom_mentions(phantoms: list[PhantomStudy]) -> None:
    wrong = sorted({d for study in phantoms for d in _sentence_disagreements(study)})
    assert not wrong, f"(sentence, label, truth, labeler): {wrong}"
