"""Errors raised by the model server facade, each carrying its HTTP mapping.

One module for all serving errors (like ``huggingface_hub.errors``). The HTTP layer turns any
:class:`ServingError` into an OpenAI-style body ``{"error": {"message", "type", "code",
"param"}}`` with :attr:`ServingError.status_code`; nothing here imports a web framework.
"""

from __future__ import annotations


class ServingError(Exception):
    """Base class of every error the model server reports to a caller.

    Attributes:
        status_code: HTTP status the API answers with.
        error_type: OpenAI-style ``error.type`` (e.g. ``"invalid_request_error"``).
        code: Machine-readable ``error.code`` (e.g. ``"model_not_found"``).
        param: Name of the request field at fault, or ``None``.
        message: Human-readable message (also ``str(error)``); never contains secrets.
    """

    status_code: int = 500
    error_type: str = "server_error"
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        """Create the error.

        Args:
            message: What went wrong and where.
            param: The request field at fault, if one is.
        """
        super().__init__(message)
        self.message = message
        self.param = param

    def to_dict(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI-style error body.

        Returns:
            ``{"error": {"message", "type", "code", "param"}}``.
        """
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "code": self.code,
                "param": self.param,
            }
        }


class UnknownModelError(ServingError):
    """The requested model (adapter) name is not registered: HTTP 404, ``model_not_found``."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, name: str, *, param: str | None = "model") -> None:
        """Create the error.

        Args:
            name: The unknown model/adapter name.
            param: The request field that named it (default ``"model"``).
        """
        super().__init__(f"The model {name!r} does not exist or is not served here", param=param)
        self.name = name


class AdapterLoadError(ServingError):
    """A registered adapter's files could not be loaded: HTTP 503, ``adapter_unavailable``.

    The message carries the reason (missing file, not LoRA, shape mismatch, ...); other adapters
    keep working.
    """

    status_code = 503
    error_type = "server_error"
    code = "adapter_unavailable"

    def __init__(self, name: str, reason: str) -> None:
        """Create the error.

        Args:
            name: The adapter that failed to load.
            reason: Why it failed (no secrets).
        """
        super().__init__(f"Adapter {name!r} could not be loaded: {reason}", param="model")
        self.name = name
        self.reason = reason


class InvalidRequestError(ServingError):
    """The request is malformed or out of range: HTTP 400, ``invalid_request``.

    ``param`` names the offending field (e.g. ``"max_tokens"``, ``"prompt"``).
    """

    status_code = 400
    error_type = "invalid_request_error"
    code = "invalid_request"
