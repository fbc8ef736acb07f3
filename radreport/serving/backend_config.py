"""Reading our Python-backend models' config parameters; importable outside Triton."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from radreport.model.report import DEFAULT_MODEL_DIR


def parameters(args: dict[str, Any]) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def model_dir_of(params: dict[str, str]) -> Path:
    """RADREPORT_MODEL_DIR, else the config's ``model_dir``, else the shipped model."""
    return Path(os.environ.get("RADREPORT_MODEL_DIR") or params.get("model_dir")
                or DEFAULT_MODEL_DIR)


def execution_providers(params: dict[str, str]) -> list[str | tuple[str, dict[str, str]]]:
    """The config's ``execution_providers`` (JSON list of names or [name, options]).

    Empty means ONNX Runtime on the CPU (our CPU target); the GPU target names TensorRT then
    CUDA, so the same loop runs on TensorRT engines that ONNX Runtime builds and caches.
    """
    raw = params.get("execution_providers", "").strip()
    if not raw:
        return ["CPUExecutionProvider"]
    providers: list[str | tuple[str, dict[str, str]]] = []
    for entry in json.loads(raw):
        if isinstance(entry, str):
            providers.append(entry)
        else:
            name, options = entry
            providers.append((str(name), {str(k): str(v) for k, v in options.items()}))
    return providers
