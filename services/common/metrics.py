"""Prometheus metrics shared by the services. Labels are bounded: stage, status, route
templates and reasons from fixed sets, never ids of studies, patients or reports."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

HTTP_REQUESTS = Counter("radreport_http_requests_total", "HTTP requests to the gateway",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("radreport_http_request_seconds", "Gateway request latency",
                         ["method", "route"], buckets=LATENCY_BUCKETS)
STUDIES_INGESTED = Counter("radreport_studies_ingested_total", "Studies accepted for reporting",
                           ["source"])
INPUT_REJECTED = Counter("radreport_inputs_rejected_total", "Inputs refused before queueing",
                         ["reason"])
REPORTS_FINISHED = Counter("radreport_reports_finished_total", "Reports finished, by status",
                           ["status"])
STAGE_LATENCY = Histogram("radreport_stage_seconds", "Time spent in one pipeline stage",
                          ["stage", "outcome"], buckets=LATENCY_BUCKETS)
