"""The HTTP layer: lorafleet's OpenAI-compatible API (FastAPI) over a backend protocol.

- :mod:`.app`: :func:`~.app.create_app` (FastAPI, error handlers, body limit, the routes);
- :mod:`.routes`: the routes, methods of :class:`~.routes.OpenAIRoutes`;
- :mod:`.backend`: :class:`~.backend.ModelBackend`, what the routes call;
- :mod:`.schemas`: request and response models; :mod:`.streaming`: server-sent events;
  :mod:`.errors`: HTTP error answers; :mod:`.body_limit`: the request body limit.

Imports only :mod:`lorafleet_serving.types` and :mod:`lorafleet_serving.errors` from the rest
of the package: never Ray, torch, the engine or the model server.
"""
