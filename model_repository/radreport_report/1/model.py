"""Triton Python-backend model: a batch of preprocessed radiographs -> whole grounded reports.

``execute`` gets every request the dynamic batcher gathered; they are stacked into one
batch so the encoder runs once and each decoder step runs once for all of them, then split
back, one response per request. A request that cannot be served gets an error response of
its own; the others are still answered.
"""

from __future__ import annotations

import json
import os
import site
import sys
from typing import Any, cast

# The backend stub embeds the interpreter's own Python and ignores PYTHONPATH. Put its
# entries first (site.addsitedir also reads .pth files, such as an editable install's), so
# the serving environment's packages win over the interpreter's: the stub is built against
# NumPy 1.x and misreads NumPy 2 arrays, so that environment pins numpy<2.
_before = list(sys.path)
for _entry in filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)):
    site.addsitedir(_entry)
sys.path[:] = [p for p in sys.path if p not in _before] + _before

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from radreport.model.report import DEFAULT_MODEL_DIR, ReportGenerator, Variant  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_dir = (os.environ.get("RADREPORT_MODEL_DIR") or params.get("model_dir")
                     or DEFAULT_MODEL_DIR)
        variant = cast(Variant, params.get("variant", "fp32"))  # ReportGenerator checks it
        self.generator = ReportGenerator(model_dir, variant)

    def execute(self, requests: list[Any]) -> list[Any]:
        images: list[np.ndarray] = []
        for request in requests:
            images.append(pb_utils.get_input_tensor_by_name(request, "image").as_numpy())
        counts = [len(image) for image in images]
        try:
            drafts = self.generator.generate_prepared(np.concatenate(images).astype(np.float32))
        except Exception as err:  # every request must get a response, never a crash
            error = pb_utils.TritonError(f"report generation failed: {err}")
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        responses = []
        start = 0
        for count in counts:
            part = drafts[start : start + count]
            start += count
            reports = np.array([[json.dumps(d.to_dict()).encode()] for d in part], dtype=object)
            probs = np.array([[d.label_probs[name] for name in self.generator.info.labels]
                              for d in part], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("report_json", reports), pb_utils.Tensor("label_probs", probs)]))
        return responses
