"""Make the demo's small text-generation base and LoRA adapters (created locally, no download).

Reuses the test suite's makers (``tests/support/models.py``): a tiny randomly initialised
``LlamaForCausalLM`` (hidden 64, 4 layers, byte-level BPE tokenizer trained on a fixed corpus)
and peft LoRA adapters over it. The weights are random, so the text is not meaningful; the
point is the API: ``/v1/completions`` for the base and for each adapter (their greedy outputs
differ, because each adapter changes the model), and streaming.

Run: ``python demo/make_causal.py OUT_DIR`` -> ``OUT_DIR/tiny-llama``, ``OUT_DIR/storyteller``
(r=8 on q_proj/v_proj) and ``OUT_DIR/poet`` (r=4 on q/k/v/o projections).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_causal(out_dir: Path) -> dict[str, Path]:
    """Create the tiny causal LM and two adapters under ``out_dir``.

    Args:
        out_dir: Parent folder (created when missing).

    Returns:
        ``{"base": ..., "storyteller": ..., "poet": ...}`` folders.
    """
    sys.path.insert(0, str(REPO))
    from tests.support.models import make_lora_adapter, make_tiny_causal_lm

    out_dir.mkdir(parents=True, exist_ok=True)
    base = make_tiny_causal_lm(out_dir / "tiny-llama", seed=0)
    return {
        "base": base,
        "storyteller": make_lora_adapter(
            base,
            out_dir / "storyteller",
            r=8,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj"],
            seed=1,
        ),
        "poet": make_lora_adapter(
            base,
            out_dir / "poet",
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            seed=2,
        ),
    }


def main() -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the models into")
    args = parser.parse_args()
    for name, path in make_causal(args.out_dir).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
