"""The inference worker's way to Triton: whole reports over gRPC, with deadlines and retries.

Transient failures (server restarting, queue full, a deadline missed while busy) are retried
with exponential backoff; a request Triton refuses as malformed is not. When Triton stays
down, or the model is not loaded, the caller gets ``TritonUnavailableError`` naming the URL
and the model, never a bare gRPC trace. Errors carry no image data and no identifiers.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)

REPORT_MODEL = "radreport_report"
# gRPC codes worth another try: the server is (re)starting, its queue is full, or busy.
TRANSIENT = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED",
                       "StatusCode.DEADLINE_EXCEEDED"})


class TritonUnavailableError(RuntimeError):
    """Triton is unreachable or the model is not ready, after every retry."""


class TritonRequestError(ValueError):
    """Triton refused the request itself (shape, type): retrying cannot help."""


@dataclass
class ReportClient:
    url: str  # host:port of Triton's gRPC endpoint
    model: str = REPORT_MODEL
    timeout_s: float = 60.0  # deadline of one attempt, queueing and decoding included
    retries: int = 3
    backoff_s: float = 0.5  # first wait; doubles each retry

    def __post_init__(self) -> None:
        self._client = grpcclient.InferenceServerClient(self.url)

    def ready(self) -> bool:
        """Whether the server is live and the model loaded (for readiness probes)."""
        try:
            return bool(self._client.is_server_ready(client_timeout=self.timeout_s)
                        and self._client.is_model_ready(self.model,
                                                        client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    def generate(self, images: np.ndarray) -> list[dict[str, Any]]:
        """Reports for model inputs (B, 1, S, S) float32, one dict per image."""
        tensor = grpcclient.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        result = self._with_retries(lambda: self._client.infer(
            self.model, [tensor], client_timeout=self.timeout_s))
        return [json.loads(row[0]) for row in result.as_numpy("report_json")]

    def _with_retries(self, call: Any) -> Any:
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return call()
            except InferenceServerException as err:
                status = str(err.status())
                if not self._transient(err, status):
                    raise TritonRequestError(f"Triton refused the request to {self.model!r}: "
                                             f"{err.message()}") from err
                if attempt == self.retries:
                    raise TritonUnavailableError(
                        f"Triton at {self.url} could not serve {self.model!r} after "
                        f"{self.retries + 1} attempts ({status}): {err.message()}") from err
                log.warning("triton transient error %s, retry %d in %.1f s", status,
                            attempt + 1, wait)
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")

    def _transient(self, err: InferenceServerException, status: str) -> bool:
        """Unreachable, overloaded or model not ready (still loading, or unloaded)."""
        if status in TRANSIENT:
            return True
        message = (err.message() or "").lower()
        return "not ready" in message or "unknown model" in message

    def close(self) -> None:
        self._client.close()
