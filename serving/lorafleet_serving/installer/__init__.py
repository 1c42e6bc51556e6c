"""The lorafleet installer: fetch, verify and validate weights and LoRA adapters onto a volume.

Run as ``lorafleet-install`` / ``python -m lorafleet_serving.installer`` (see
docs/interfaces.md sections 1-2) or call :func:`install`. Never imports kubernetes.
"""

from .api import install, remove
from .errors import InstallError
from .request import InstallRequest

__all__ = ["InstallError", "InstallRequest", "install", "remove"]
