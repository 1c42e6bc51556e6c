"""The model server layer: the asyncio facade over an engine (no Ray, no HTTP, no torch import).

- :mod:`.model_server`: :class:`~.model_server.ModelServer`, which takes an
  :class:`~lorafleet_serving.engine.protocol.Engine` and serves requests with mixed-adapter
  batching (:mod:`.generation_runs`, :mod:`.classification_runs`, :mod:`.batcher`), adapter
  residency (:mod:`.adapter_cache`), request checks (:mod:`.requests`) and chat prompts
  (:mod:`.chat`);
- :mod:`.backend`: :class:`~.backend.ModelServerBackend`, the HTTP API's backend over an
  in-process model server;
- :mod:`.factory`: :func:`~.factory.build_model_server`, a model server over the transformers
  engine from a base folder and settings (the one module here that imports the engine's
  implementation).
"""
