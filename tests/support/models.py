"""Tiny models, tokenizers and peft LoRA adapters made on the fly, with no network.

Plain functions (usable from any test, benchmark or script) plus session-scoped pytest
fixtures built on them:

- :func:`make_tiny_tokenizer` - a byte-level BPE tokenizer trained locally with ``tokenizers``
  on a small built-in corpus, with ``<s>``/``</s>``/``<pad>`` and a simple chat template.
- :func:`make_tiny_causal_lm` - a randomly initialised tiny ``LlamaForCausalLM`` (or GPT-2).
- :func:`make_tiny_classifier` - a tiny ``BertForSequenceClassification`` with a locally built
  WordPiece tokenizer.
- :func:`make_lora_adapter` - a peft LoRA adapter over one of the above, saved with
  ``save_pretrained`` (safetensors); its outputs differ from the base's.
- :func:`reference_greedy`, :func:`reference_logits` - what plain transformers + peft answer
  with only one adapter active: the reference serving results are compared with.

Fixtures: ``tiny_causal_lm``, ``tiny_classifier`` (paths), ``tiny_lora_adapters`` and
``tiny_cls_adapters`` (dicts adapter name -> path).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

# A few hundred distinct words, built from fixed lists so every run makes the same vocabulary.
_SUBJECTS = [
    "the cat",
    "a dog",
    "the model",
    "my friend",
    "the server",
    "a student",
    "the cluster",
    "the adapter",
    "our team",
    "the robot",
    "a bird",
    "the engine",
    "the teacher",
    "a farmer",
]
_VERBS = [
    "eats",
    "sees",
    "loads",
    "serves",
    "likes",
    "builds",
    "reads",
    "writes",
    "moves",
    "finds",
    "trains",
    "answers",
    "installs",
    "sings",
    "paints",
    "counts",
    "opens",
    "closes",
]
_OBJECTS = [
    "an apple",
    "the weights",
    "a letter",
    "the river",
    "blue flowers",
    "the green house",
    "many tokens",
    "a small batch",
    "the long road",
    "fresh bread",
    "the red ball",
    "seven stones",
    "the old book",
    "a quiet song",
    "the bright moon",
    "warm tea",
]
_TAILS = [
    "today",
    "every morning",
    "at night",
    "with care",
    "very fast",
    "quite slowly",
    "in the garden",
    "on the hill",
    "near the sea",
    "after lunch",
    "before sunrise",
    "again",
]
_EXTRA_WORDS = [
    "hello",
    "world",
    "yes",
    "no",
    "good",
    "bad",
    "happy",
    "sad",
    "great",
    "terrible",
    "love",
    "hate",
    "movie",
    "film",
    "food",
    "price",
    "sport",
    "music",
    "science",
    "politics",
    "weather",
    "travel",
    "question",
    "answer",
    "user",
    "assistant",
    "system",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "hundred",
    "thousand",
    "positive",
    "negative",
    "neutral",
    "topic",
    "business",
    "health",
    "alpha",
    "beta",
    "gamma",
    "delta",
    "kubernetes",
    "ray",
    "serve",
    "lora",
    "peft",
    "gpu",
    "cpu",
    "memory",
    "install",
    "delete",
    "update",
    "create",
    "read",
    "write",
    "stream",
    "batch",
    "cache",
    "token",
]

SPECIAL_TOKENS = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
}
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_corpus() -> list[str]:
    """A deterministic list of short English sentences (about 1,300) for training tokenizers.

    Returns:
        Sentences built from fixed subject/verb/object/tail lists plus a line of extra words.
    """
    sentences = [
        f"{s} {v} {o} {t}."
        for s, v, o, t in itertools.islice(
            itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _TAILS), 0, None, 41
        )
    ]
    sentences.extend(" ".join(_EXTRA_WORDS[i : i + 8]) for i in range(0, len(_EXTRA_WORDS), 8))
    return sentences


def make_tiny_tokenizer(path: str | Path, *, vocab_size: int = 512) -> Path:
    """Train a byte-level BPE tokenizer locally and save it as a ``PreTrainedTokenizerFast``.

    Byte-level BPE can encode any text (no unknown tokens), so prompts from tests never fail.

    Args:
        path: Folder to write ``tokenizer.json``, ``tokenizer_config.json`` and friends into.
        vocab_size: Target vocabulary size including the 4 special tokens and the 256 bytes.

    Returns:
        The folder, as a ``Path``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[
            SPECIAL_TOKENS["pad_token"],
            SPECIAL_TOKENS["bos_token"],
            SPECIAL_TOKENS["eos_token"],
            SPECIAL_TOKENS["unk_token"],
        ],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(SPECIAL_TOKENS["bos_token"])
    # Prepend <s> to every encoded sequence, like Llama tokenizers do.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, padding_side="left", **SPECIAL_TOKENS)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return out


def make_tiny_causal_lm(
    path: str | Path,
    *,
    seed: int = 0,
    arch: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    vocab_size: int = 512,
    intermediate_size: int | None = None,
) -> Path:
    """Save a randomly initialised tiny causal LM plus its tokenizer (safetensors).

    Weights use ``initializer_range=0.2`` (ten times the usual) so next-token logits are well
    separated and greedy decoding is robust to float rounding between batched and single runs.

    Args:
        path: Output folder (``config.json``, ``model.safetensors``, tokenizer files).
        seed: ``torch.manual_seed`` for the weights.
        arch: ``"llama"`` (``LlamaForCausalLM``) or ``"gpt2"`` (``GPT2LMHeadModel``).
        hidden_size: Model width.
        num_layers: Number of decoder layers.
        num_heads: Attention heads.
        vocab_size: Tokenizer vocabulary size; the model's embedding matches the tokenizer.
        intermediate_size: Llama MLP width (default ``2 * hidden_size``).

    Returns:
        The folder, as a ``Path``.

    Raises:
        ValueError: ``arch`` is not one of the supported names.
    """
    import torch
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    out = Path(path)
    make_tiny_tokenizer(out, vocab_size=vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    torch.manual_seed(seed)
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=hidden_size,
            intermediate_size=intermediate_size or hidden_size * 2,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=num_heads,
            max_position_embeddings=1024,
            initializer_range=0.2,
            tie_word_embeddings=False,
            **ids,
        )
        model = LlamaForCausalLM(config)
    elif arch == "gpt2":
        config = GPT2Config(
            n_embd=hidden_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=1024,
            initializer_range=0.2,
            **ids,
        )
        model = GPT2LMHeadModel(config)
    else:
        raise ValueError(f"make_tiny_causal_lm: arch must be 'llama' or 'gpt2', got {arch!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


def _wordpiece_vocab() -> list[str]:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-:;()")
    words = sorted({w.strip(".") for s in tiny_corpus() for w in s.split()} - {""})
    return specials + chars + [f"##{c}" for c in chars] + words


def make_tiny_classifier(
    path: str | Path,
    *,
    num_labels: int = 2,
    seed: int = 0,
    id2label: dict[int, str] | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
) -> Path:
    """Save a randomly initialised tiny ``BertForSequenceClassification`` and its tokenizer.

    The WordPiece vocabulary (about 300 entries: specials, characters, ``##`` characters and the
    corpus words) is written locally, so any lower-case text can be encoded.

    Args:
        path: Output folder.
        num_labels: Size of the classification head.
        seed: ``torch.manual_seed`` for the weights.
        id2label: Label names by id; default ``LABEL_0``... (``{0: "negative", 1: "positive"}``
            when ``num_labels == 2``).
        hidden_size: Encoder width.
        num_layers: Encoder layers.

    Returns:
        The folder, as a ``Path``.

    Raises:
        ValueError: ``id2label`` does not have exactly ``num_labels`` entries.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    if id2label is None:
        id2label = (
            {0: "negative", 1: "positive"}
            if num_labels == 2
            else {i: f"LABEL_{i}" for i in range(num_labels)}
        )
    if len(id2label) != num_labels:
        raise ValueError(
            f"make_tiny_classifier: id2label has {len(id2label)} entries, num_labels={num_labels}"
        )
    vocab_file = out / "vocab.txt"
    vocab = _wordpiece_vocab()
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab_file=str(vocab_file), do_lower_case=True)
    tokenizer.save_pretrained(out)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=256,
        num_labels=num_labels,
        id2label={int(k): v for k, v in id2label.items()},
        label2id={v: int(k) for k, v in id2label.items()},
        pad_token_id=0,
        initializer_range=0.2,
    )
    model = BertForSequenceClassification(config)
    model.save_pretrained(out, safe_serialization=True)
    return out


def _default_targets(model: Any, task: str) -> list[str]:
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if task == "SEQ_CLS":
        return [n for n in ("query", "value") if n in names]
    for candidate in (["q_proj", "v_proj"], ["c_attn"]):
        if all(c in names for c in candidate):
            return candidate
    raise ValueError("make_lora_adapter: cannot pick default target_modules for this base")


def make_lora_adapter(
    base_path: str | Path,
    out_path: str | Path,
    *,
    r: int = 8,
    lora_alpha: int = 16,
    target_modules: list[str] | None = None,
    modules_to_save: list[str] | None = None,
    seed: int = 0,
    train_steps: int = 0,
    task: str = "CAUSAL_LM",
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
) -> Path:
    """Create a peft LoRA adapter over a local base model and ``save_pretrained`` it.

    With ``train_steps == 0`` the LoRA weights are random (``init_lora_weights=False``: both A
    and B get the default ``nn.Linear`` init from ``torch.manual_seed(seed)``), so the adapter
    already changes the outputs. With ``train_steps > 0`` it is then trained that many Adam steps
    (lr 1e-2) on random token sequences (causal LM loss) or random labels (classification).

    Args:
        base_path: Folder of the base model (from :func:`make_tiny_causal_lm` or
            :func:`make_tiny_classifier`).
        out_path: Output folder (``adapter_config.json``, ``adapter_model.safetensors``).
        r: LoRA rank.
        lora_alpha: LoRA alpha (scaling is ``lora_alpha / r``).
        target_modules: Module names to adapt; default ``q_proj``/``v_proj`` (Llama),
            ``c_attn`` (GPT-2), ``query``/``value`` (BERT).
        modules_to_save: Fully trained modules saved with the adapter, e.g. ``["classifier"]``.
        seed: Seed for the LoRA init and the training data.
        train_steps: Number of optimisation steps after init.
        task: ``"CAUSAL_LM"`` or ``"SEQ_CLS"``.
        num_labels: For ``SEQ_CLS`` with its own head: the head's label count (may differ from
            the base's; requires ``"classifier"`` in ``modules_to_save``).
        id2label: Label names for the adapter's own head while training (peft does not save
            them; serving gets them from the registry's ``labels``); default ``LABEL_<i>``.

    Returns:
        The adapter folder, as a ``Path``.

    Raises:
        ValueError: Unknown ``task``, or ``num_labels`` differs from the base without a head in
            ``modules_to_save``.
    """
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    if task not in ("CAUSAL_LM", "SEQ_CLS"):
        raise ValueError(f"make_lora_adapter: task must be CAUSAL_LM or SEQ_CLS, got {task!r}")
    base_config = AutoConfig.from_pretrained(base_path)
    torch.manual_seed(seed)
    if task == "CAUSAL_LM":
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    else:
        base_labels = base_config.num_labels
        if (
            num_labels is not None
            and num_labels != base_labels
            and "classifier" not in (modules_to_save or [])
        ):
            raise ValueError(
                "make_lora_adapter: num_labels differs from the base; "
                "add 'classifier' to modules_to_save"
            )
        n = num_labels or base_labels
        labels = id2label or (
            base_config.id2label if n == base_labels else {i: f"LABEL_{i}" for i in range(n)}
        )
        model = AutoModelForSequenceClassification.from_pretrained(
            base_path,
            dtype=torch.float32,
            num_labels=n,
            id2label={int(k): v for k, v in labels.items()},
            label2id={v: int(k) for k, v in labels.items()},
            ignore_mismatched_sizes=n != base_labels,
        )
    targets = target_modules or _default_targets(model, task)
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=targets,
        modules_to_save=modules_to_save,
        lora_dropout=0.0,
        init_lora_weights=False,
        task_type=TaskType.CAUSAL_LM if task == "CAUSAL_LM" else TaskType.SEQ_CLS,
    )
    # SEQ_CLS would silently add the head to modules_to_save; keep exactly what was asked for.
    if task == "SEQ_CLS" and not modules_to_save:
        config.task_type = None
    peft_model = get_peft_model(model, config)
    if train_steps > 0:
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
        vocab = model.config.vocab_size
        peft_model.train()
        for _ in range(train_steps):
            ids = torch.randint(5, vocab, (4, 12), generator=gen)
            if task == "CAUSAL_LM":
                loss = peft_model(input_ids=ids, labels=ids).loss
            else:
                y = torch.randint(0, model.config.num_labels, (4,), generator=gen)
                loss = peft_model(input_ids=ids, labels=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        peft_model.eval()
    out = Path(out_path)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def make_variant_adapter(
    base: str | Path, out: str | Path, task_type: str, seed: int, **config: Any
) -> Path:
    """Build a peft LoRA adapter of any variant over a local base and ``save_pretrained`` it.

    ``LoraConfig(r=4, lora_alpha=8, init_lora_weights=False)`` updated by ``config`` (e.g.
    ``r``, ``use_dora``, ``lora_bias``, ``modules_to_save``, ``bias``), then every trainable tensor (LoRA matrices,
    DoRA magnitudes, ``lora_B`` biases, saved modules) is moved off its init by seeded noise,
    as training would, so each part of the variant changes the output.

    Args:
        base: Base model folder.
        out: Output folder.
        task_type: peft's task type, ``CAUSAL_LM`` or ``SEQ_CLS``.
        seed: Seed of the init and the noise.
        **config: Further ``LoraConfig`` fields.

    Returns:
        The adapter folder, as a ``Path``.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    auto = AutoModelForCausalLM if task_type == "CAUSAL_LM" else AutoModelForSequenceClassification
    model = get_peft_model(
        auto.from_pretrained(base, dtype=torch.float32),
        LoraConfig(
            **{
                "r": 4,
                "lora_alpha": 8,
                "task_type": task_type,
                "init_lora_weights": False,
                **config,
            }
        ),
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05 * (p.abs().mean() + 0.1))
    model.save_pretrained(out)
    return Path(out)


def reference_greedy(
    base_path: str | Path,
    adapter_path: str | Path | None,
    prompt_ids: list[int],
    max_new_tokens: int,
) -> list[int]:
    """Greedy tokens from plain transformers + peft with only ``adapter_path`` active.

    The reference the engine must match: ``PeftModel.from_pretrained`` on a freshly loaded
    float32 base, one prompt, ``generate(do_sample=False)``.

    Args:
        base_path: Base model folder.
        adapter_path: Adapter folder, or ``None`` for the bare base.
        prompt_ids: Prompt token ids.
        max_new_tokens: Tokens to generate at most (stops after an end-of-sequence token).

    Returns:
        The generated ids (including the end-of-sequence token if produced).
    """
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path))
    model.eval()
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=model.config.pad_token_id,
        )
    return out[0, len(prompt_ids) :].tolist()


def reference_logits(
    base_path: str | Path, adapter_path: str | Path | None, texts: list[str]
) -> list[list[float]]:
    """Classification logits from plain transformers + peft with only ``adapter_path`` active.

    An adapter with its own head of ``n`` labels is applied to a base loaded with
    ``num_labels=n`` (``ignore_mismatched_sizes``), as a user of peft would; peft then puts the
    saved head in place.

    Args:
        base_path: Base model folder.
        adapter_path: Adapter folder, or ``None`` for the bare base.
        texts: Texts, each run on its own (no padding).

    Returns:
        Logits per text.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_path)
    kwargs = {}
    if adapter_path is not None:
        weights = load_file(str(Path(adapter_path) / "adapter_model.safetensors"))
        head = weights.get("base_model.model.classifier.weight")
        if head is not None:
            kwargs = {"num_labels": head.shape[0], "ignore_mismatched_sizes": True}
    model = AutoModelForSequenceClassification.from_pretrained(
        base_path, dtype=torch.float32, **kwargs
    )
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_path))
    model.eval()
    out = []
    with torch.no_grad():
        for text in texts:
            out.append(model(**tok([text], return_tensors="pt")).logits[0].tolist())
    return out


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ``LlamaForCausalLM`` (hidden 64, 4 layers, 4 heads, vocab 512) folder."""
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"), seed=0)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random 2-label ``BertForSequenceClassification`` folder (negative/positive)."""
    return make_tiny_classifier(tmp_path_factory.mktemp("tiny-bert"), num_labels=2, seed=0)


@pytest.fixture(scope="session")
def tiny_lora_adapters(tmp_path_factory: pytest.TempPathFactory, tiny_causal_lm: Path) -> dict:
    """Four LoRA adapters over ``tiny_causal_lm`` whose greedy outputs differ.

    ``alpha`` (r=8, q/v), ``beta`` (r=4, q/k/v/o), ``gamma`` (r=16, all linear layers of the
    decoder, trained 3 steps), ``delta`` (r=8, lora_alpha=8 so scaling 1, q/v).
    """
    root = tmp_path_factory.mktemp("tiny-llama-adapters")
    specs = {
        "alpha": {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "seed": 1},
        "beta": {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"],
            "seed": 2,
        },
        "gamma": {
            "r": 16,
            "lora_alpha": 32,
            "target_modules": ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
            "seed": 3,
            "train_steps": 3,
        },
        "delta": {"r": 8, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "seed": 4},
    }
    return {
        name: make_lora_adapter(tiny_causal_lm, root / name, **spec) for name, spec in specs.items()
    }


@pytest.fixture(scope="session")
def tiny_cls_adapters(tmp_path_factory: pytest.TempPathFactory, tiny_classifier: Path) -> dict:
    """LoRA adapters over ``tiny_classifier``.

    ``sentiment``: own 2-label head (negative/positive); ``topic``: own 4-label head
    (sport/politics/science/business); ``plain``: LoRA on query/value only, uses the base head.
    """
    root = tmp_path_factory.mktemp("tiny-bert-adapters")
    return {
        "sentiment": make_lora_adapter(
            tiny_classifier,
            root / "sentiment",
            task="SEQ_CLS",
            modules_to_save=["classifier"],
            num_labels=2,
            id2label={0: "negative", 1: "positive"},
            seed=11,
            train_steps=2,
        ),
        "topic": make_lora_adapter(
            tiny_classifier,
            root / "topic",
            task="SEQ_CLS",
            modules_to_save=["classifier"],
            num_labels=4,
            id2label={0: "sport", 1: "politics", 2: "science", 3: "business"},
            seed=12,
        ),
        "plain": make_lora_adapter(tiny_classifier, root / "plain", task="SEQ_CLS", seed=13),
    }
