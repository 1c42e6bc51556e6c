"""Turn an OpenAI chat ``messages`` list into a prompt for the base model's tokenizer.

When the tokenizer has a chat template (``tokenizer.chat_template``, Jinja, see
https://huggingface.co/docs/transformers/chat_templating) it is applied with
``add_generation_prompt=True`` and tokenized by the template itself, so special tokens the
template writes (e.g. ``<s>``) are not added a second time. Without a template the
conversation is written as plain ``role: content`` lines ending in ``assistant:``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InvalidRequestError


def render_chat_prompt(tokenizer: Any, messages: Sequence[Mapping[str, Any]]) -> str | list[int]:
    """Render chat messages as the prompt of a text-generation request.

    Args:
        tokenizer: The base model's Hugging Face tokenizer.
        messages: ``[{"role": str, "content": str, "name"?: str}, ...]``, at least one.

    Returns:
        Token ids (``list[int]``) when the tokenizer has a chat template, else a prompt string
        (which the engine tokenizes with special tokens added).

    Raises:
        InvalidRequestError: ``messages`` is empty, or the chat template refused the
            conversation (e.g. a template that requires alternating roles); ``param`` is
            ``"messages"``.
    """
    if not messages:
        raise InvalidRequestError("messages must contain at least one message", param="messages")
    conversation = [dict(m) for m in messages]
    if getattr(tokenizer, "chat_template", None):
        try:
            out = tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True, return_dict=True
            )
        except Exception as exc:  # jinja2 TemplateError, raise_exception() in templates
            raise InvalidRequestError(
                f"the model's chat template rejected the messages: {exc}", param="messages"
            ) from None
        ids = out["input_ids"] if isinstance(out, Mapping) or hasattr(out, "keys") else out
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(i) for i in ids]
    lines = [f"{m['role']}: {m.get('content') or ''}" for m in conversation]
    return "\n".join(lines) + "\nassistant:"
