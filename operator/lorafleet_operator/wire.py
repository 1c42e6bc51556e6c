"""Base classes of the resources' pydantic models: camelCase on the wire (Kubernetes API
conventions), snake_case in Python."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel as PydanticModel
from pydantic import ConfigDict
from pydantic.alias_generators import to_camel


class Wire(PydanticModel):
    """Base of spec models: camelCase aliases, unknown fields rejected, names accepted too."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """Return the object as it appears in a manifest: camelCase keys, unset fields left out.

        Returns:
            A JSON-compatible dict.
        """
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusWire(Wire):
    """Base of status models: unknown fields (for example kopf's own) are kept, not rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="allow", use_enum_values=True
    )
