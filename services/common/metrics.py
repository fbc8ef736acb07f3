"""Prometheus metrics shared by the services. Labels are bounded: stage, status, route
templates and reasons from fixed sets, never ids of studies, patients or reports."""

from __future__ import annotations

from collections.abc import Iterator

import redis
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60)

HTTP_REQUESTS = Counter("radreport_http_requests_total", "HTTP requests to the gateway",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("radreport_http_request_seconds", "Gateway request latency",
                         ["method", "route"], buckets=LATENCY_BUCKETS)
GRPC_REQUESTS = Counter("radreport_grpc_requests_total", "gRPC calls to the gateway",
                        ["method", "code"])
GRPC_LATENCY = Histogram("radreport_grpc_request_seconds",
                         "gRPC call duration (a stream: until its last event)", ["method"],
                         buckets=LATENCY_BUCKETS)
FIRST_SENTENCE = Histogram("radreport_stream_first_sentence_seconds",
                           "From acceptance to the first sentence sent on a GenerateStream",
                           buckets=LATENCY_BUCKETS)
STUDIES_INGESTED = Counter("radreport_studies_ingested_total", "Studies accepted for reporting",
                           ["source"])
INPUT_REJECTED = Counter("radreport_inputs_rejected_total", "Inputs refused before queueing",
                         ["reason"])
REPORTS_FINISHED = Counter("radreport_reports_finished_total", "Reports finished, by status",
                           ["status"])
REPORTS_REDRIVEN = Counter("radreport_reports_redriven_total",
                           "Reports queued again by the re-driver after their message was lost, "
                           "by the stage they resumed at", ["stage"])
STAGE_LATENCY = Histogram("radreport_stage_seconds", "Time spent in one pipeline stage",
                          ["stage", "outcome"], buckets=LATENCY_BUCKETS)

# --- model-level signals (clinical drift), recorded by the pipeline stages -------------------
# Our design docs (000, 4.4-4.5): finding prevalence, attention entropy, disagreement between
# the label head and the text, and input drift against the training distribution.
REPORTS_DRAFTED = Counter("radreport_reports_drafted_total", "Reports drafted by the model")
FINDINGS_STATED = Counter("radreport_findings_total",
                          "Findings called present, by CheXpert label and by who says so",
                          ["finding", "source"])  # source: text | label_head
QA_DISAGREEMENTS = Counter("radreport_qa_disagreements_total",
                           "Critical findings where the label head and the text disagree",
                           ["finding"])
REVIEW_REQUIRED = Counter("radreport_review_required_total",
                          "Reports flagged for radiologist review, by kind of reason", ["reason"])
# The safety net of model v2: the out-of-distribution gate's score and verdict.
OOD_SCORE = Histogram("radreport_ood_score",
                      "Mahalanobis distance of a study's image features from the training data",
                      buckets=(2, 4, 6, 8, 10, 12, 14, 16, 20, 25, 30, 40, 60, 100))
OOD_FLAGGED = Counter("radreport_ood_flagged_total",
                      "Studies flagged as outside the model's training distribution")
ATTENTION_ENTROPY = Histogram("radreport_attention_entropy_bits",
                              "Mean entropy of a report's sentence grounding maps",
                              buckets=(2, 3, 4, 5, 5.5, 6, 6.5, 7, 7.5, 8))
INPUT_DRIFT = Histogram("radreport_input_ks_distance",
                        "KS distance of a study's pixel intensities from the training reference",
                        buckets=(0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0))
REPORT_LATENCY = Histogram("radreport_report_seconds",
                           "From accepting a study to its completed report",
                           buckets=LATENCY_BUCKETS)
MODEL_LATENCY = Histogram("radreport_model_seconds", "Triton round trip for one report",
                          buckets=LATENCY_BUCKETS)

REPORTS_SIGNED = Counter("radreport_reports_signed_total",
                         "Reports signed by a radiologist, by whether the AI text was edited",
                         ["edited"])
EDIT_DISTANCE = Histogram("radreport_report_edit_distance",
                          "Normalised edit distance between the AI draft and the signed text",
                          buckets=(0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0))


# Kinds of review reason (services.fhir.findings.REASON_KINDS): the only review label values.
REVIEW_REASON_KINDS = ("outside the model's training distribution",
                       "critical finding disagreement", "uncertain critical finding",
                       "low confidence", "image quality")


def _initialise_known_labels() -> None:
    """Export 0 for every known label value, so a rate is 0 rather than missing."""
    from radreport.data.labels import CHEXPERT_LABELS, CRITICAL_LABELS

    for label in CHEXPERT_LABELS:
        for source in ("text", "label_head"):
            FINDINGS_STATED.labels(label, source)
    for label in CRITICAL_LABELS:
        QA_DISAGREEMENTS.labels(label)
    for reason in REVIEW_REASON_KINDS:
        REVIEW_REQUIRED.labels(reason)
    for status in ("completed", "failed"):
        REPORTS_FINISHED.labels(status)
    for edited in ("yes", "no"):
        REPORTS_SIGNED.labels(edited)


_initialise_known_labels()


class QueueDepthCollector(Collector):
    """Tasks waiting in each stage's queue and in the dead-letter list, read at scrape time
    (the autoscaling signal for workers)."""

    def __init__(self, redis_url: str, queues: list[str], dead_letter_key: str) -> None:
        self.client = redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
        self.queues = queues
        self.dead_letter_key = dead_letter_key

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily("radreport_queue_depth", "Tasks waiting per queue",
                                  labels=["queue"])
        dead = GaugeMetricFamily("radreport_dead_letter_depth",
                                 "Messages dead-lettered after their last attempt")
        try:
            for queue in self.queues:
                depth.add_metric([queue], float(self.client.llen(queue)))
            dead.add_metric([], float(self.client.llen(self.dead_letter_key)))
        except redis.RedisError:
            return  # no figures rather than wrong ones; readiness reports Redis down
        yield depth
        yield dead
