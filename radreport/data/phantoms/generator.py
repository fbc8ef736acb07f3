"""One call, one study: ``generate_study(seed, size)`` is deterministic in both.

The pipeline reads top-down: plan the findings (some change the anatomy itself), sample
the patient and draw normal anatomy, draw the findings onto it, expose the film, write the
report from the ground truth.
"""

from __future__ import annotations

import numpy as np

from radreport.data.labels import label_vector
from radreport.data.phantoms.anatomy import render_anatomy, sample_anatomy
from radreport.data.phantoms.detector import expose, sample_exposure
from radreport.data.phantoms.findings import FindingCanvas, plan_findings, render_plan
from radreport.data.phantoms.reports import write_report
from radreport.data.phantoms.study import PatientInfo, PhantomStudy, ViewPosition

MIN_SIZE, MAX_SIZE = 256, 2048

INDICATIONS: dict[str, tuple[str, ...]] = {
    "normal": ("Routine preoperative evaluation.", "Chest pain.", "Cough.", "Follow-up."),
    "heart_failure": ("Shortness of breath.", "Evaluate for fluid overload.", "Dyspnea."),
    "pneumonia": ("Fever and cough.", "Evaluate for pneumonia.", "Productive cough."),
    "icu": ("Line placement.", "Intubated patient, evaluate tube position.", "ICU follow-up."),
    "trauma": ("Fall with chest wall pain.", "Motor vehicle collision.", "Chest trauma."),
    "oncology": ("History of lung cancer, follow-up.", "Weight loss.", "Hemoptysis."),
    "pacemaker": ("Evaluate pacemaker leads.", "Post device placement."),
    "pneumothorax": ("Sudden chest pain and dyspnea.", "Evaluate for pneumothorax."),
    "effusion": ("Dyspnea.", "Evaluate for effusion."),
    "mediastinal": ("Chest pain radiating to the back.", "Abnormal prior imaging."),
    "pleural_other": ("Asbestos exposure.", "Follow-up."),
}


def generate_study(seed: int, size: int = 512) -> PhantomStudy:
    """Render the synthetic frontal chest radiograph number ``seed`` at ``size`` pixels."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    # Independent streams: drawing (whose draws depend on the size) never shifts the plan,
    # the patient or the wording, so a seed is the same study at every size.
    rng, anatomy_rng, findings_rng, film_rng = (np.random.default_rng([seed, stream])
                                                for stream in range(4))
    plan = plan_findings(rng)
    anatomy = sample_anatomy(anatomy_rng, size, heart_ratio=plan.heart_ratio,
                             mediastinum_scale=plan.mediastinum_scale)
    field_of_view_mm = anatomy_rng.uniform(380.0, 430.0)
    render = render_anatomy(anatomy_rng, anatomy)
    pixel_spacing_mm = field_of_view_mm / size
    canvas = FindingCanvas(findings_rng, anatomy, render, pixel_spacing_mm)
    findings = render_plan(canvas, plan)
    image = expose(film_rng, canvas.attenuation, sample_exposure(film_rng), size / 512.0)
    sentences = write_report(rng, findings, render.masks)
    positives = {label for f in findings for label in f.labels}
    view: ViewPosition = "AP" if plan.scenario == "icu" or rng.random() < 0.15 else "PA"
    return PhantomStudy(
        study_id=f"PHANTOM-S{seed:07d}",
        seed=seed,
        image=image,
        pixel_spacing_mm=round(float(pixel_spacing_mm), 4),
        view=view,
        patient=_patient(rng, seed),
        anatomy=render.masks,
        findings=findings,
        sentences=sentences,
        labels=label_vector(positives),
        clinical_indication=str(rng.choice(INDICATIONS[plan.scenario])),
    )


def _patient(rng: np.random.Generator, seed: int) -> PatientInfo:
    return PatientInfo(
        patient_id=f"PHANTOM-{seed:07d}",
        patient_name=f"PHANTOM^CASE{seed:07d}",
        age_years=int(rng.integers(18, 95)),
        sex="F" if rng.random() < 0.5 else "M",
    )
