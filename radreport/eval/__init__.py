"""Evaluation of drafted reports: a rule-based CheXpert-style labeler for clinical F1."""

from radreport.eval.labeler import label_report, label_sentence, report_vector

__all__ = ["label_report", "label_sentence", "report_vector"]
