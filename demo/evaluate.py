"""Held-out accuracy of classification models measured through lorafleet's HTTP API.

Sends the test split of a demo dataset (``demo/data/<name>.test.jsonl``) to
``POST <endpoint>/v1/classify`` (body ``{"model": ..., "input": [texts]}``; answer
``{"data": [{"index", "label", "scores"}]}``) in batches, compares each returned label name with
the expected one (from ``<name>.labels.json``), and prints one line per model. Standard library
only, so it measures exactly what any HTTP client gets.

Run: ``python demo/evaluate.py ENDPOINT DATA MODEL [MODEL ...] [--min-accuracy M]``
(e.g. ``python demo/evaluate.py http://127.0.0.1:8000/minilm demo/data/sentiment sentiment
minilm``). Exit code 1 when the first MODEL's accuracy is below ``--min-accuracy``.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

BATCH = 32


def classify(endpoint: str, model: str, texts: list[str]) -> list[str]:
    """Classify texts with one model through ``POST /v1/classify``.

    Args:
        endpoint: Base URL of the application (``http://127.0.0.1:<port>[/<prefix>]``).
        model: The base model's or an adapter's served name.
        texts: Inputs.

    Returns:
        The predicted label name per text, in input order.

    Raises:
        RuntimeError: If the server answers with an error status (its body is included).
    """
    labels: list[str] = []
    for start in range(0, len(texts), BATCH):
        body = json.dumps({"model": model, "input": texts[start : start + BATCH]}).encode()
        request = urllib.request.Request(
            f"{endpoint}/v1/classify", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{model}: HTTP {exc.code}: {exc.read().decode()[:500]}") from exc
        rows = sorted(answer["data"], key=lambda r: r["index"])
        labels.extend(str(r["label"]) for r in rows)
    return labels


def main() -> int:
    """Command line entry point (see the module docstring); returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("endpoint", help="application base URL")
    parser.add_argument("data", type=Path, help="dataset prefix, e.g. demo/data/sentiment")
    parser.add_argument("models", nargs="+", help="served names to evaluate")
    parser.add_argument("--min-accuracy", type=float, default=0.0, help="required for MODEL 1")
    args = parser.parse_args()
    names = json.loads(Path(f"{args.data}.labels.json").read_text())
    lines = Path(f"{args.data}.test.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    texts = [r["text"] for r in rows]
    expected = [names[str(r["label"])] for r in rows]
    chance = 1.0 / len(names)
    first = None
    for model in args.models:
        predicted = classify(args.endpoint, model, texts)
        accuracy = sum(p == e for p, e in zip(predicted, expected, strict=True)) / len(rows)
        first = accuracy if first is None else first
        print(
            f"  {args.data.name:<10} {model:<12} held-out accuracy {accuracy:.3f} "
            f"({len(rows)} examples, {len(names)} labels, chance {chance:.2f})"
        )
    if first is not None and first < args.min_accuracy:
        print(f"  {args.models[0]}: accuracy {first:.3f} is below {args.min_accuracy}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
