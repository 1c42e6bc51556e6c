"""Train one LoRA adapter with its own classification head over the demo's MiniLM base (peft).

The adapter is a standard PEFT LoRA folder (``adapter_config.json`` +
``adapter_model.safetensors``): LoRA matrices (rank ``r``, scale ``lora_alpha / r``) on the
encoder's attention projections, plus a new classification head saved whole through
``modules_to_save=["classifier"]`` -- so two adapters over the same base can have different
label sets (sentiment: 2 labels, topic: 4 labels). Each adapter's head has
``len(labels)`` outputs; the base's own (untrained) head is not used by it.

Data: JSON Lines ``{"text": str, "label": int}`` (``DATA.train.jsonl``; label names in
``DATA.labels.json``), as written by ``demo/data/make_datasets.py``.

Run: ``python demo/train_adapter.py --base BASE_DIR --data demo/data/sentiment --out OUT_DIR``.
Prints the training time (seconds) and the held-out accuracy of the peft model at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, BertForSequenceClassification


def load_jsonl(path: Path) -> list[dict]:
    """Read ``{"text", "label"}`` rows from a JSON Lines file.

    Args:
        path: The ``.jsonl`` file.

    Returns:
        The rows, in file order.

    Raises:
        ValueError: If a line is not an object with a string ``text`` and an int ``label``.
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("text"), str) or not isinstance(row.get("label"), int):
                raise ValueError(f"{path}:{lineno}: expected {{'text': str, 'label': int}}")
            rows.append(row)
    return rows


def _accuracy(model, tokenizer, rows: list[dict], max_length: int) -> float:
    correct = 0
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            batch = rows[start : start + 64]
            enc = tokenizer(
                [r["text"] for r in batch],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            pred = model(**enc).logits.argmax(-1)
            correct += sum(int(p) == r["label"] for p, r in zip(pred.tolist(), batch, strict=True))
    return round(correct / len(rows), 3)


def train_adapter(
    base: Path,
    data: Path,
    out: Path,
    *,
    rank: int = 8,
    lora_alpha: int = 16,
    epochs: int = 1,
    batch_size: int = 16,
    lr: float = 3e-3,
    max_length: int = 48,
    seed: int = 0,
) -> dict:
    """Fine-tune a LoRA adapter plus its own head and save it as a PEFT folder.

    Args:
        base: Folder of the base model (``BertForSequenceClassification``; its encoder is used).
        data: Dataset prefix: ``<data>.train.jsonl`` and ``<data>.labels.json`` must exist.
        out: Folder the adapter is written to.
        rank: LoRA rank ``r``.
        lora_alpha: LoRA ``lora_alpha`` (scale ``lora_alpha / r``).
        epochs: Passes over the training split.
        batch_size: Examples per optimiser step.
        lr: AdamW learning rate.
        max_length: Tokens per example after truncation.
        seed: Seed of the head's initialisation and of the shuffling.

    Returns:
        ``{"seconds": float, "test_accuracy": float | None, "examples": int, "labels": {...}}``:
        training time in seconds and the accuracy of this peft model on ``<data>.test.jsonl``
        (when present) -- the reference the demo compares the HTTP API's answers with.

    Raises:
        FileNotFoundError: If a dataset file is missing.
    """
    rows = load_jsonl(Path(f"{data}.train.jsonl"))
    labels = json.loads(Path(f"{data}.labels.json").read_text())
    num_labels = len(labels)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = BertForSequenceClassification.from_pretrained(
        base,
        num_labels=num_labels,
        id2label={int(k): v for k, v in labels.items()},
        label2id={v: int(k) for k, v in labels.items()},
        ignore_mismatched_sizes=True,  # the base's head may have another label count
    )
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=rank,
        lora_alpha=lora_alpha,
        lora_dropout=0.05,
        target_modules=["query", "key", "value"],
        modules_to_save=["classifier"],
    )
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    started = time.perf_counter()
    for _ in range(epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            batch = [rows[i] for i in order[start : start + batch_size]]
            enc = tokenizer(
                [r["text"] for r in batch],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            target = torch.tensor([r["label"] for r in batch])
            loss = model(**enc, labels=target).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    seconds = time.perf_counter() - started
    model.eval()
    test_path = Path(f"{data}.test.jsonl")
    test_accuracy = (
        _accuracy(model, tokenizer, load_jsonl(test_path), max_length)
        if test_path.is_file()
        else None
    )
    model.peft_config["default"].base_model_name_or_path = "sentence-transformers/all-MiniLM-L6-v2"
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    return {
        "seconds": round(seconds, 1),
        "test_accuracy": test_accuracy,
        "examples": len(rows),
        "labels": labels,
    }


def main() -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="base model folder")
    parser.add_argument(
        "--data", type=Path, required=True, help="dataset prefix, e.g. demo/data/topic"
    )
    parser.add_argument("--out", type=Path, required=True, help="adapter folder to write")
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank r (default 8)")
    parser.add_argument("--epochs", type=int, default=1, help="passes over the data (default 1)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = train_adapter(args.base, args.data, args.out, rank=args.rank, epochs=args.epochs)
    print(
        f"trained {args.out.name}: {result['examples']} examples, {result['seconds']} s, "
        f"held-out accuracy (peft, in-process) {result['test_accuracy']}, "
        f"labels {result['labels']}"
    )


if __name__ == "__main__":
    main()
