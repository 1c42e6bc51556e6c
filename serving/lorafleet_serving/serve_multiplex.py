"""Ray Serve's multiplex LRU, reached through Serve's private attributes — here and only here.

``@serve.multiplexed`` keeps, per replica, an LRU of loaded model ids (the tokens its loader
returned) and reports them to the controller, which routes requests for a model id to the
replicas holding it. The LRU is not public API: ``ray/serve/api.py`` (``multiplexed``) stores
a ``ray.serve.multiplex._ModelMultiplexWrapper`` on the deployment instance under
``__serve_multiplex_wrapper`` at the first call; the wrapper holds ``models`` (an
``OrderedDict`` model id -> token, oldest first) and ``max_num_models_per_replica``, and pushes
the ids to the controller when ``_push_multiplexed_replica_info`` is set. lorafleet sets the
limit to -1 (unlimited, public API) so that only its adapter cache evicts, and keeps the LRU
equal to what the cache holds (an adapter evicted by the cache or removed from the registry
must not stay routed here) by taking ids out through :class:`MultiplexLRU`.
:func:`internals_missing` names whatever of the above the installed Ray no longer has; a test
runs it, so a Ray upgrade that changes them fails loudly instead of misrouting silently.
"""

from __future__ import annotations

import inspect
from typing import Any

#: Where ``@serve.multiplexed`` stores its wrapper on the deployment instance.
WRAPPER_ATTR = "__serve_multiplex_wrapper"
_PUSH_FLAG = "_push_multiplexed_replica_info"


class MultiplexLRU:
    """The multiplex LRU of one deployment instance (a view; holds no state of its own)."""

    def __init__(self, wrapper: Any) -> None:
        self._wrapper = wrapper

    @classmethod
    def of(cls, owner: Any) -> MultiplexLRU | None:
        """The LRU of ``owner`` (the deployment instance), or None before its first load."""
        wrapper = getattr(owner, WRAPPER_ATTR, None)
        return cls(wrapper) if wrapper is not None else None

    def names(self) -> list[str]:
        """Model ids held, oldest first."""
        return list(self._wrapper.models)

    def __len__(self) -> int:
        return len(self._wrapper.models)

    def forget(self, name: str) -> Any | None:
        """Drop ``name`` without calling its unload; the controller is told at its next push.

        Returns:
            Its token, or None when it was not held.
        """
        token = self._wrapper.models.pop(name, None)
        if token is not None:
            self._changed()
        return token

    def _changed(self) -> None:
        setattr(self._wrapper, _PUSH_FLAG, True)


def internals_missing() -> list[str]:
    """Name each Ray Serve internal :class:`MultiplexLRU` relies on that the installed Ray lacks.

    Returns:
        One message per missing piece (attribute name, where it was expected); empty when all
        are there.
    """
    from ray.serve import api, multiplex

    problems: list[str] = []
    if WRAPPER_ATTR not in inspect.getsource(api.multiplexed):
        problems.append(f"ray.serve.api.multiplexed no longer stores its wrapper as {WRAPPER_ATTR}")
    cls = getattr(multiplex, "_ModelMultiplexWrapper", None)
    if cls is None:
        return [*problems, "ray.serve.multiplex._ModelMultiplexWrapper is gone"]
    source = inspect.getsource(cls)
    init = inspect.getsource(cls.__init__)
    if "self.models = OrderedDict()" not in init:
        problems.append("_ModelMultiplexWrapper.models is no longer an OrderedDict set in __init__")
    if source.count(f"self.{_PUSH_FLAG}") < 2:  # set in __init__ and read where it pushes
        problems.append(f"_ModelMultiplexWrapper.{_PUSH_FLAG} is no longer read")
    return problems
