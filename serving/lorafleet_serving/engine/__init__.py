"""The inference engine layer: one base model plus LoRA adapters, run in mixed-adapter batches.

- :mod:`.protocol`: the :class:`~.protocol.Engine` interface the model server calls and the data
  crossing it (:class:`~.protocol.GenerationRow`, :class:`~.protocol.StepEvent`); no torch at
  run time.
- :mod:`.transformers_engine`: :class:`~.transformers_engine.TransformersEngine`, the
  transformers + peft implementation; :mod:`.adapter_loading` holds its adapter-reading steps,
  :mod:`.generation` its step-wise decoding (:class:`~.generation.GenerationBatch`),
  :mod:`.lora_batched` the per-row LoRA stacks, :mod:`.base_model` loading the base and the dtype/device choice.

Nothing here imports Ray, the HTTP layer or the model server. This ``__init__`` imports nothing,
so ``lorafleet_serving.engine.protocol`` loads without torch.
"""
