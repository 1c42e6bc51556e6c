"""The base model's architecture, instantiated on the meta device (no memory for weights).

Used to check weight files, checkpoints and adapters against the real module tree without
loading any weight. ``torch.device("meta")`` makes every parameter a shape-only tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import INVALID_BASE_MODEL, InstallError


@dataclass
class MetaArchitecture:
    """A model built on the meta device and the facts derived from it.

    Attributes:
        model: The ``torch.nn.Module`` (meta tensors).
        name: Class name, e.g. ``BertForSequenceClassification``.
        shapes: state_dict key -> shape (tuple of ints).
        aliases: key -> the set of keys sharing the same parameter (tied weights).
        base_model_prefix: transformers' prefix of the backbone (``bert``, ``model``), or "".
    """

    model: object
    name: str
    shapes: dict[str, tuple[int, ...]]
    aliases: dict[str, set[str]] = field(default_factory=dict)
    base_model_prefix: str = ""

    def module_names(self) -> list[str]:
        """Dotted names of every submodule (``bert.encoder.layer.0.attention.self.query``)."""
        return [n for n, _ in self.model.named_modules() if n]


def load_config(folder: Path):
    """Load ``folder/config.json`` with transformers (no remote code).

    Raises:
        InstallError: ``InvalidBaseModel`` when missing or not loadable, naming the file.
    """
    from transformers import AutoConfig

    path = folder / "config.json"
    if not path.is_file():
        raise InstallError(INVALID_BASE_MODEL, f"{path} is missing")
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        raise InstallError(
            INVALID_BASE_MODEL, f"{path} is not loadable by transformers: {exc}"
        ) from exc


def build_meta(
    config, task: str | None = None, num_labels: int | None = None, use_declared: bool = False
):
    """Instantiate the architecture on the meta device.

    Args:
        config: A transformers ``PretrainedConfig``.
        task: ``text-classification`` builds ``AutoModelForSequenceClassification``,
            ``text-generation`` ``AutoModelForCausalLM``; None (or ``use_declared``) builds
            ``config.architectures[0]`` when transformers has it, else ``AutoModel``.
        num_labels: Classification head size (overrides the config's).
        use_declared: Build the class the weights were saved from (``config.architectures``).

    Returns:
        A :class:`MetaArchitecture`.

    Raises:
        InstallError: ``InvalidBaseModel`` when transformers cannot build it.
    """
    import copy

    import torch
    import transformers
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    if num_labels is not None:
        config.num_labels = num_labels
    declared = (getattr(config, "architectures", None) or [None])[0]
    try:
        with torch.device("meta"):
            if not use_declared and task == "text-classification":
                model = AutoModelForSequenceClassification.from_config(config)
            elif not use_declared and task == "text-generation":
                model = AutoModelForCausalLM.from_config(config)
            elif declared and hasattr(transformers, declared):
                model = getattr(transformers, declared)(config)
            else:
                model = AutoModel.from_config(config)
    except Exception as exc:
        what = declared or type(config).__name__
        raise InstallError(
            INVALID_BASE_MODEL, f"the architecture {what} (task {task}) does not instantiate: {exc}"
        ) from exc
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    groups: dict[int, set[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), set()).add(n)
    aliases = {n: g for g in groups.values() if len(g) > 1 for n in g}
    return MetaArchitecture(
        model=model,
        name=type(model).__name__,
        shapes=shapes,
        aliases=aliases,
        base_model_prefix=getattr(model, "base_model_prefix", "") or "",
    )
