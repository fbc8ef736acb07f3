"""Request bodies capped while they stream in, and given one deadline.

Starlette reads a body whole before anyone can judge it: a 200 MB JSON body cost 388 MB
before its 422, and a body trickled in byte by byte held its request forever. This ASGI
middleware refuses a declared Content-Length over the cap before reading anything (413),
stops reading as soon as the bytes received pass it (413), and answers 408 when the body
has not all arrived by the deadline. It answers itself and then tells the application the
client went away, so whatever the application sends after is dropped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.openapi import error_answer

JSON_MAX_BYTES = 1024 * 1024  # generate by path or URL, review text: a few KB in practice
MULTIPART_OVERHEAD = 64 * 1024  # the form's other fields and part headers
NO_BODY_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


@dataclass
class BodyLimits:
    app: ASGIApp
    multipart_max_bytes: int
    deadline_s: float = 30.0
    json_max_bytes: int = JSON_MAX_BYTES

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in NO_BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").startswith("multipart/")
        limit = self.multipart_max_bytes + MULTIPART_OVERHEAD if multipart else self.json_max_bytes
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _answer(send, 413, f"the request body is larger than {limit} bytes",
                          "body_too_large")
            return
        await _GuardedRequest(self.app, limit, self.deadline_s).run(scope, receive, send)


class _GuardedRequest:
    """One request: counts the body, keeps its deadline, answers at most once."""

    def __init__(self, app: ASGIApp, limit: int, deadline_s: float) -> None:
        self.app, self.limit, self.deadline_s = app, limit, deadline_s
        self.received, self.body_done, self.answered, self.started = 0, False, False, False
        self.deadline = 0.0

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.deadline = asyncio.get_running_loop().time() + self.deadline_s

        async def guarded_receive() -> Message:
            if self.answered:
                return {"type": "http.disconnect"}
            if self.body_done:
                return await receive()
            remaining = self.deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(remaining, 0.0)):
                    message = await receive()
            except TimeoutError:
                return await self.refuse(send, 408, "the request body did not arrive within "
                                         f"{self.deadline_s:g} s", "body_timeout")
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                self.body_done = not message.get("more_body", False)
                if self.received > self.limit:
                    return await self.refuse(send, 413, "the request body is larger than "
                                             f"{self.limit} bytes", "body_too_large")
            return message

        async def guarded_send(message: Message) -> None:
            if self.answered:
                return  # the application answers a client we already answered
            self.started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not self.answered:
                raise  # a real error: the server's handlers see it

    async def refuse(self, send: Send, status: int, detail: str, reason: str) -> Message:
        if not self.started:
            await _answer(send, status, detail, reason)
        self.answered = True
        return {"type": "http.disconnect"}


async def _answer(send: Send, status: int, detail: str, reason: str) -> None:
    """The documented error body, with the connection closed: the rest of the body is
    never read."""
    response = error_answer(status, detail, reason)
    await send({"type": "http.response.start", "status": status,
                "headers": [*response.raw_headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": response.body})
