"""What the OpenAPI document says about error answers, so that clients (and schemathesis)
find every status the API can give, each with the body it really has."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from services.common.schemas import ErrorBody

RETRY_AFTER_S = 10  # what a 503 asks the client to wait

DESCRIPTIONS = {
    401: "No valid bearer token or API key",
    403: "The caller's role may not do this (audited)",
    404: "Unknown report (or sentence), or an image_path that names no file",
    408: "The request body did not arrive in time",
    409: "The report is not in a state that allows this",
    413: "The body or the image is too large",
    415: "The image is not DICOM (Part 10), PNG or JPEG",
    422: "Invalid request, or an image we will not report on (reason says why)",
    500: "Internal error (the body names nothing internal)",
    503: "A dependency (Redis, the report store) is unavailable; retry after Retry-After",
}
AUTHENTICATED = (401, 403, 422, 500, 503)
WITH_BODY = (408, 413)


def error_answer(status: int, detail: str, reason: str) -> JSONResponse:
    """An error answer as documented (ErrorBody); a 503 says when to retry."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"detail": detail, "reason": reason}, status_code=status,
                        headers=headers)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for these statuses, all with the ErrorBody schema."""
    return {code: {"model": ErrorBody, "description": DESCRIPTIONS[code]} for code in codes}


def inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` inlined: ``#/$defs/...`` does not resolve
    inside an OpenAPI document, whose root is not the schema's."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved
