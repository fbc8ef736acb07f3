"""Loaders for chest X-ray report datasets behind one interface.

``open_dataset("auto", root).records(split="train")`` yields :class:`ReportRecord` objects
from phantom exports, MIMIC-CXR-JPG, IU X-ray (Kaggle) or CheXpert alike.
"""

from radreport.data.datasets.base import (
    DATASET_KINDS,
    ReportDataset,
    ReportRecord,
    clean_report_text,
    detect_dataset,
    extract_sections,
    is_frontal,
    open_dataset,
    patient_split,
    report_text,
    study_labels,
)

__all__ = [
    "DATASET_KINDS",
    "ReportDataset",
    "ReportRecord",
    "clean_report_text",
    "detect_dataset",
    "extract_sections",
    "is_frontal",
    "open_dataset",
    "patient_split",
    "report_text",
    "study_labels",
]
