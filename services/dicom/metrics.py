"""DICOM gateway metrics; labels from fixed sets only (no UIDs, no AE titles)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ASSOCIATIONS = Counter("radreport_dicom_associations_total", "Associations by outcome",
                       ["outcome"])
INSTANCES_RECEIVED = Counter("radreport_dicom_instances_received_total",
                             "Instances stored (new) or recognised again (duplicate)", ["kind"])
INSTANCES_REJECTED = Counter("radreport_dicom_instances_rejected_total",
                             "C-STORE requests refused, by reason", ["reason"])
STUDIES_COMPLETED = Counter("radreport_dicom_studies_completed_total",
                            "Studies complete after their idle time, by outcome", ["outcome"])
EXPORT_QUEUE = Gauge("radreport_dicom_export_pending", "Result objects waiting to be sent")
EXPORT_FAILURES = Counter("radreport_dicom_export_failures_total", "Failed C-STORE sends")
EXPORTS_SENT = Counter("radreport_dicom_exports_sent_total", "Result objects delivered",
                       ["kind"])
