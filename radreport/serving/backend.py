"""The code of our Triton Python-backend models; each ``model.py`` only imports one class.

- ``ReportModel``: a whole report per request, the greedy loop run in-process with ONNX
  Runtime; requests gathered by the dynamic batcher are stacked into one batch.
- ``StreamingReportModel``: the same reports in decoupled mode: one response per sentence
  as soon as it is decoded (text, section, map, boxes in model pixels), then the whole
  report as the final response. This is what lets the gRPC API stream a report.
- ``GraphModel``: one exported graph (encoder or decoder step) on ONNX Runtime, the CPU
  stand-in for the GPU target's TensorRT engine of the same name and I/O.
- ``BlsReportModel``: the same whole report, but every encoder call and decoder step is a
  BLS request to those two models. It exists to measure what a round trip per token costs
  against the in-process loop (``radreport bench serving``).

The report models take an optional ``context_json`` input (``radreport.serving.context``):
each image's clinical indication, age and sex, which the model puts into its decoder prompt.
A request whose context is malformed gets an error; the others in its batch are served.

Runs only inside tritonserver's Python backend (``triton_python_backend_utils``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

from radreport.model.onnx_runtime import EncoderOutput, OnnxReportModel
from radreport.model.prompt import ClinicalContext
from radreport.model.report import (
    DraftReport,
    ReportDecoded,
    ReportGenerator,
    SentenceDecoded,
    Variant,
    model_files,
)
from radreport.serving.backend_config import execution_providers, model_dir_of, parameters
from radreport.serving.context import CONTEXT_INPUT, parse_contexts


class _Batch:
    """The well-formed requests of one ``execute`` call, stacked: their images, each image's
    context, and which request each image belongs to; malformed requests get an error."""

    def __init__(self, requests: list[Any]) -> None:
        self.images: list[np.ndarray] = []  # per valid request: (n, 1, S, S)
        self.contexts: list[ClinicalContext | None] = []  # per image
        self.valid: list[int] = []  # index in ``requests`` of each valid request
        self.errors: dict[int, Any] = {}  # request index -> TritonError
        for n, request in enumerate(requests):
            image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            given = pb_utils.get_input_tensor_by_name(request, CONTEXT_INPUT)
            try:
                contexts = parse_contexts(None if given is None else given.as_numpy(),
                                          len(image))
            except ValueError as err:  # the message names no value: no PHI in the error
                self.errors[n] = pb_utils.TritonError(f"bad request: {err}",
                                                      pb_utils.TritonError.INVALID_ARG)
                continue
            self.images.append(image)
            self.contexts.extend(contexts)
            self.valid.append(n)

    def stacked(self) -> np.ndarray:
        return np.concatenate(self.images).astype(np.float32)


class _GeneratorModel:
    """The model folder loaded once per Triton model instance, and how reports are sent."""

    def initialize(self, args: dict[str, Any]) -> None:
        params = parameters(args)
        variant = cast(Variant, params.get("variant", "fp32"))  # ReportGenerator checks it
        self.providers = execution_providers(params)
        self.generator = self.make_generator(model_dir_of(params), variant)

    def make_generator(self, model_dir: Path, variant: Variant) -> ReportGenerator:
        return ReportGenerator(model_dir, variant, providers=self.providers)

    def report_response(self, drafts: list[DraftReport]) -> Any:
        """Reports and their label probabilities, one row per image of a request."""
        reports = np.array([[json.dumps(d.to_dict()).encode()] for d in drafts], dtype=object)
        probs = np.array([[d.label_probs[name] for name in self.generator.info.labels]
                          for d in drafts], dtype=np.float32)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("report_json", reports), pb_utils.Tensor("label_probs", probs)])


class ReportModel(_GeneratorModel):
    """Whole reports, decoded in-process; one response per request, errors included."""

    def execute(self, requests: list[Any]) -> list[Any]:
        batch = _Batch(requests)
        responses = {n: pb_utils.InferenceResponse(error=error)
                     for n, error in batch.errors.items()}
        if batch.valid:
            responses.update(self._reports(batch))
        return [responses[n] for n in range(len(requests))]

    def _reports(self, batch: _Batch) -> dict[int, Any]:
        """A response per valid request: its reports, or the error all of them share."""
        try:
            drafts = self.generator.generate_prepared(batch.stacked(),
                                                      contexts=batch.contexts)
        except Exception as err:  # every request must get a response, never a crash
            error = pb_utils.TritonError(f"report generation failed: {err}")
            return {n: pb_utils.InferenceResponse(error=error) for n in batch.valid}
        responses = {}
        start = 0
        for n, image in zip(batch.valid, batch.images, strict=True):
            responses[n] = self.report_response(drafts[start : start + len(image)])
            start += len(image)
        return responses


class StreamingReportModel(_GeneratorModel):
    """Decoupled: sentences stream out of the batched greedy loop as they complete.

    Every request gets one ``sentence_json`` response per sentence of each of its images,
    then a final response with ``report_json`` and ``label_probs`` (as ``ReportModel``), or an
    error; a request is never left without its final response.
    """

    def execute(self, requests: list[Any]) -> None:
        batch = _Batch(requests)
        all_senders = [r.get_response_sender() for r in requests]
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for n, error in batch.errors.items():
            all_senders[n].send(pb_utils.InferenceResponse(error=error), flags=final)
        if batch.valid:
            self._stream(batch, [all_senders[n] for n in batch.valid])

    def _stream(self, batch: _Batch, senders: list[Any]) -> None:
        """Sentences and final reports of the valid requests (``senders`` in their order)."""
        images = batch.images
        owner = [(n, k) for n, image in enumerate(images) for k in range(len(image))]
        drafts: list[dict[int, Any]] = [{} for _ in images]
        closed = [False] * len(images)
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            for event in self.generator.stream_prepared(batch.stacked(),
                                                        contexts=batch.contexts):
                n, k = owner[event.item]
                if isinstance(event, SentenceDecoded):
                    sentence = {"image": k, "index": event.index, "decoded_at": time.time(),
                                **event.sentence.to_dict()}
                    senders[n].send(pb_utils.InferenceResponse(output_tensors=[
                        pb_utils.Tensor("sentence_json", np.array(
                            [[json.dumps(sentence).encode()]], dtype=object))]))
                elif isinstance(event, ReportDecoded):
                    drafts[n][k] = event.report
                    if len(drafts[n]) == len(images[n]):
                        part = [drafts[n][i] for i in range(len(images[n]))]
                        senders[n].send(self.report_response(part), flags=final)
                        closed[n] = True
        except Exception as err:  # every request must get its final response, never a crash
            error = pb_utils.TritonError(f"report generation failed: {err}")
            for n in (n for n, done in enumerate(closed) if not done):
                senders[n].send(pb_utils.InferenceResponse(error=error), flags=final)


class GraphModel:
    """The ONNX graph named by the config's ``graph`` parameter, request by request."""

    def initialize(self, args: dict[str, Any]) -> None:
        params = parameters(args)
        path = model_dir_of(params) / f"{params['graph']}.onnx"
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name in self.inputs}
            try:
                values = self.session.run(self.outputs, feed)
            except Exception as err:  # every request must get a response, never a crash
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"graph failed: {err}")))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, value)
                for name, value in zip(self.outputs, values, strict=True)]))
        return responses


def bls(model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
    """One synchronous BLS request; a failed response raises with Triton's message."""
    request = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=outputs,
        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()])
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"BLS call to {model} failed: {response.error().message()}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs]


class BlsRuntime(OnnxReportModel):
    """The greedy loop of ``OnnxReportModel`` with its two graphs behind BLS calls.

    The local sessions are kept only for the decoding constants in the graphs' metadata.
    """

    def encode(self, images: np.ndarray) -> EncoderOutput:
        # every output the graph has: v2's are memory_kv, label_probs, features, query_maps,
        # and fine_query_maps with the fine grounding head
        names = [o.name for o in self.encoder.get_outputs()]
        outputs = dict(zip(names, bls("encoder", {"image": images}, names), strict=True))
        return EncoderOutput(outputs["memory_kv"], outputs["label_probs"],
                             outputs.get("features"), outputs.get("query_maps"),
                             outputs.get("fine_query_maps"))

    def step(self, tokens: np.ndarray, past_kv: np.ndarray,
             memory_kv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        logits, present_kv, cross_attn = bls(
            "decoder_step",
            {"tokens": tokens.astype(np.int64), "past_kv": past_kv, "memory_kv": memory_kv},
            ["logits", "present_kv", "cross_attn"])
        return logits, present_kv, cross_attn


class BlsReportModel(ReportModel):
    def make_generator(self, model_dir: Path, variant: Variant) -> ReportGenerator:
        runtime = BlsRuntime(*model_files(model_dir, variant))
        return ReportGenerator(model_dir, variant, runtime=runtime)
