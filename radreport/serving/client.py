"""The inference worker's way to Triton: reports over gRPC, with deadlines and retries.

``generate`` asks ``radreport_report`` for whole reports; ``generate_stream`` asks the
decoupled ``radreport_report_stream`` and yields each sentence as Triton decodes it. Both
send the request's clinical context (``radreport.serving.context``) when there is one.

Transient failures (server restarting, queue full, a deadline missed while busy) are retried
with exponential backoff; a request Triton refuses as malformed is not. When Triton stays
down, or the model is not loaded, the caller gets ``TritonUnavailableError`` naming the URL
and the model, never a bare gRPC trace. Errors carry no image data and no identifiers.
"""

from __future__ import annotations

import json
import logging
import queue
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from radreport.model.prompt import ClinicalContext
from radreport.serving.context import CONTEXT_INPUT, context_tensor

log = logging.getLogger(__name__)

REPORT_MODEL = "radreport_report"
STREAM_MODEL = "radreport_report_stream"
# gRPC codes worth another try: the server is (re)starting, its queue is full, or busy.
TRANSIENT = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED",
                       "StatusCode.DEADLINE_EXCEEDED"})


def channel_args() -> list[tuple[str, int]]:
    """tritonclient's own channel options, plus a reconnect backoff capped at 1 s: gRPC's
    default grows to 120 s, so a restarted Triton went unnoticed (readiness, requests) for
    as long as it had been away."""
    keepalive = grpcclient.KeepAliveOptions()
    return [("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls",
             int(keepalive.keepalive_permit_without_calls)),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 1000)]


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
        self._client = grpcclient.InferenceServerClient(self.url, channel_args=channel_args())

    def ready(self) -> bool:
        """Whether the server is live and the model loaded (for readiness probes)."""
        try:
            return bool(self._client.is_server_ready(client_timeout=self.timeout_s)
                        and self._client.is_model_ready(self.model,
                                                        client_timeout=self.timeout_s))
        except InferenceServerException:
            return False

    def generate(self, images: np.ndarray,
                 contexts: Sequence[ClinicalContext | None] | None = None,
                 ) -> list[dict[str, Any]]:
        """Reports for model inputs (B, 1, S, S) float32, one dict per image; ``contexts``
        (optional, one per image) is what the request says of the patient."""
        inputs = triton_inputs(images, contexts)
        result = self._with_retries(lambda: self._client.infer(
            self.model, inputs, client_timeout=self.timeout_s))
        return [json.loads(row[0]) for row in result.as_numpy("report_json")]

    def generate_stream(self, image: np.ndarray, context: ClinicalContext | None = None,
                        ) -> Iterator[dict[str, Any]]:
        """Events for one model input (1, 1, S, S) from the decoupled model: each sentence as
        it is decoded (``{"type": "sentence", "index", "text", "boxes", "heatmap", ...}``),
        then the whole report (``{"type": "report", ...}``, the dict ``generate`` returns).

        Retried like ``generate`` until the first event; a stream broken after that raises,
        and a caller that tries again gets the same sentences again (decoding is greedy).
        """
        if image.shape[0] != 1:
            raise ValueError("generate_stream takes one image")
        inputs = triton_inputs(image, [context])
        event = self._with_retries(lambda: self._open_stream(inputs))
        try:
            while True:
                yield event
                if event["type"] == "report":
                    return
                event = self._next_event()
        finally:  # also when the caller stops early: nothing is left running in Triton
            self._client.stop_stream(cancel_requests=event["type"] != "report")

    def _open_stream(self, inputs: list[grpcclient.InferInput]) -> dict[str, Any]:
        """Start one request on a new stream; its first event (closed again on failure)."""
        self._responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self._deadline = time.monotonic() + self.timeout_s
        self._client.start_stream(callback=lambda result, error: self._responses.put(
            (result, error)))
        try:
            try:
                self._client.async_stream_infer(self.model, inputs)
            except InferenceServerException as err:
                # A stream that broke at once (connection refused) says only that it is "no
                # longer in valid state"; the real status went to the callback.
                raise self._stream_error(timeout_s=1.0) or err from None
            return self._next_event()
        except BaseException:
            self._client.stop_stream(cancel_requests=True)
            raise

    def _stream_error(self, timeout_s: float) -> InferenceServerException | None:
        """The error the stream's callback received, if one arrives within ``timeout_s``."""
        try:
            _, error = self._responses.get(timeout=timeout_s)
        except queue.Empty:
            return None
        return error if isinstance(error, InferenceServerException) else None

    def _next_event(self) -> dict[str, Any]:
        try:
            result, error = self._responses.get(
                timeout=max(0.0, self._deadline - time.monotonic()))
        except queue.Empty:
            raise InferenceServerException("no response before the deadline",
                                           status="StatusCode.DEADLINE_EXCEEDED") from None
        if error is not None:
            raise error
        sentence = result.as_numpy("sentence_json")
        if sentence is not None:
            return {"type": "sentence", **json.loads(sentence[0][0])}
        return {"type": "report", **json.loads(result.as_numpy("report_json")[0][0])}

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


def triton_inputs(images: np.ndarray, contexts: Sequence[ClinicalContext | None] | None,
            ) -> list[grpcclient.InferInput]:
    """The image tensor, and ``context_json`` only when some image has a context (so
    requests without one look exactly as before, e.g. to a v1 server's config)."""
    tensor = grpcclient.InferInput("image", list(images.shape), "FP32")
    tensor.set_data_from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if contexts is None or all(c is None for c in contexts):
        return [tensor]
    if len(contexts) != len(images):
        raise ValueError(f"{len(contexts)} contexts for {len(images)} images")
    rows = context_tensor(contexts)
    context = grpcclient.InferInput(CONTEXT_INPUT, list(rows.shape), "BYTES")
    context.set_data_from_numpy(rows)
    return [tensor, context]
