"""What each served peft LoRA variant costs next to plain LoRA, in the same batched step.

Run from the repository root::

    python benchmarks/variants.py --quick      # about 3 minutes on 2 CPU cores

One Llama of realistic proportions (hidden 512, 8 layers, 8 heads, intermediate 1024, random
weights, made on the fly) in one
:class:`lorafleet_serving.engine.transformers_engine.TransformersEngine`, with 4 plain LoRA
adapters (r=16 on q/k/v/o) and one adapter of each variant (r=16): DoRA and LoRA bias on
q/k/v/o, LoRA on the embedding plus q/k/v/o, rsLoRA with rank/alpha patterns, and a saved
``lm_head`` (``modules_to_save``) beside LoRA on q/k/v/o. Side by side, rounds alternating:

- **mixed**: a batch of 16 requests, 12 over the 4 plain adapters and 4 over the variant, vs
  the same batch with those 4 rows over a fifth plain adapter (same shapes, same rows);
- **uniform**: 16 requests all over the variant vs all over one plain adapter.

Every request is greedy, 32 prompt tokens, ``--tokens`` new tokens, EOS ignored (the engine's
EOS set is emptied) so both sides do exactly the same number of decode steps. Warm: one
untimed run of each batch first. The figure is generated tokens/s, median over rounds; a
ratio below 1 is the variant's cost. Last line exactly:
``dora_vs_plain=<r> bias_vs_plain=<r> embed_vs_plain=<r> rslora_vs_plain=<r> lmhead_vs_plain=<r>``
(mixed batches).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from tests.support.models import make_tiny_causal_lm, make_variant_adapter  # noqa: E402

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
VARIANTS = {
    "dora": {"target_modules": QKVO, "use_dora": True},
    "bias": {"target_modules": QKVO, "lora_bias": True},
    "embed": {"target_modules": ["embed_tokens", *QKVO]},
    "rslora": {
        "target_modules": QKVO,
        "use_rslora": True,
        "rank_pattern": {"k_proj": 8},
        "alpha_pattern": {"o_proj": 64},
    },
    "lmhead": {"target_modules": QKVO, "modules_to_save": ["lm_head"]},
}


def _rows(engine, names: list[str], prompt: list[int], tokens: int):
    from lorafleet_serving.engine.protocol import GenerationRow

    return [GenerationRow(list(prompt), slot=engine.slot(n), max_tokens=tokens) for n in names]


def _rate(engine, names: list[str], prompt: list[int], tokens: int) -> float:
    """Generated tokens/s of one batch (every row runs to ``tokens``: EOS is ignored)."""
    rows = _rows(engine, names, prompt, tokens)
    start = time.perf_counter()
    engine.generate(rows)
    elapsed = time.perf_counter() - start
    made = sum(len(r.token_ids) for r in rows)
    assert made == len(names) * tokens, "a row stopped early"
    return made / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 rounds of 24 tokens")
    parser.add_argument("--rounds", type=int, help="rounds per comparison (default 5)")
    parser.add_argument("--tokens", type=int, help="new tokens per request (default 48)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (3 if args.quick else 5)
    tokens = args.tokens or (24 if args.quick else 48)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")
    from lorafleet_serving.engine.transformers_engine import TransformersEngine

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = make_tiny_causal_lm(
            root / "base", hidden_size=512, num_layers=8, num_heads=8, vocab_size=8000
        )
        engine = TransformersEngine(base, "text-generation", max_adapters=len(VARIANTS) + 5)
        engine.eos_token_ids = set()  # every row generates exactly `tokens` tokens
        plain = [f"plain{i}" for i in range(5)]
        for i, name in enumerate(plain):
            path = make_variant_adapter(
                base, root / name, "CAUSAL_LM", i, r=16, lora_alpha=32, target_modules=QKVO
            )
            engine.load_adapter(name, path)
        for i, (name, config) in enumerate(VARIANTS.items(), start=10):
            path = make_variant_adapter(
                base, root / name, "CAUSAL_LM", i, r=16, lora_alpha=32, **config
            )
            engine.load_adapter(name, path)
        prompt = engine.encode_prompt(
            "the cat eats an apple while the model serves many adapters on one small machine "
            "and the river runs near the sea after lunch today"
        )[:32]
        print(
            f"Llama hidden 512, 8 layers, vocab {engine.model.config.vocab_size}; batch 16, "
            f"{len(prompt)} prompt tokens, {tokens} new tokens, {rounds} rounds, torch 1 thread"
        )
        figures: dict[str, float] = {}
        for variant in VARIANTS:
            sides = {
                "mixed": (plain[:4] * 3 + [variant] * 4, plain[:4] * 3 + [plain[4]] * 4),
                "uniform": ([variant] * 16, [plain[0]] * 16),
            }
            for kind, (with_variant, only_plain) in sides.items():
                _rate(engine, with_variant, prompt, 2)  # warm both batches' shapes and paths
                _rate(engine, only_plain, prompt, 2)
                ours, theirs = [], []
                for _ in range(rounds):
                    ours.append(_rate(engine, with_variant, prompt, tokens))
                    theirs.append(_rate(engine, only_plain, prompt, tokens))
                a, b = statistics.median(ours), statistics.median(theirs)
                print(
                    f"  {variant:7s} {kind:8s} {a:8.1f} tok/s   plain {b:8.1f} tok/s"
                    f"   ratio {a / b:.2f}"
                )
                if kind == "mixed":
                    figures[variant] = a / b
        print(" ".join(f"{name}_vs_plain={r:.2f}" for name, r in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
