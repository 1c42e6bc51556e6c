"""ASGI middleware that bounds the size of HTTP request bodies.

:class:`BodySizeLimit` wraps the app's ``receive``: when a route reads its body, a
``Content-Length`` above the limit fails the first read before any byte is read, and a body
without one (chunked) fails the read that takes the byte count past the limit - the rest is
never pulled from the client. The failure is Starlette's ``HTTPException(413)``, which the app's
exception handlers turn into its own error answer (``http.app.create_app`` makes it an OpenAI error
object naming the limit).

Starlette's ``RequestBodyLimitMiddleware`` (FastAPI's ``max_body_size``) counts the same way, but
replaces every answer to a request whose ``Content-Length`` is over the limit with a plain-text
"Content Too Large", so clients would not get the API's JSON error object.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """Refuse request bodies larger than ``max_bytes`` with ``HTTPException(413)``.

    Args:
        app: The ASGI app (usually added with ``app.add_middleware(BodySizeLimit, ...)``).
        max_bytes: Largest body in bytes (>= 0).

    Raises:
        ValueError: ``max_bytes`` < 0.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"BodySizeLimit: max_bytes must be >= 0, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the app with a ``receive`` that stops at the limit (HTTP requests only)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        too_long = declared is not None and declared.isdigit() and int(declared) > self.max_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            if too_long:
                raise HTTPException(status_code=413)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(status_code=413)
            return message

        await self.app(scope, limited_receive, send)
