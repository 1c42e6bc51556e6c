"""Serving benchmark: mixed-adapter batches vs one adapter vs naive peft, and adapter load time.

Run from the repository root::

    python benchmarks/serving.py --quick      # under 3 minutes on 2 CPU cores

On one tiny randomly initialised Llama (made on the fly, no network) with 8 LoRA adapters, in one
process, side by side:

(a) generated tokens/s of uniformly mixed traffic over 8 adapters, all requests submitted at once
    to :class:`lorafleet_serving.server.model_server.ModelServer` (mixed batches, stacked batched LoRA);
(b) the same traffic with every request naming one adapter;
(c) a naive baseline: plain peft serving one request at a time, ``set_adapter`` switching, HF
    ``generate`` (greedy, KV cache), on a quarter of the requests (its rate is per request);
(d) the time to load an adapter when 63 are already resident (the 64th) vs when none is (the
    1st): repetitions alternate between an empty and a full engine and the ratio uses the minima
    (timeit's convention: interference from other processes only adds time); medians are
    printed too, and the very first load (which also wraps the model in peft) separately.

Rounds alternate (a), (b), (c) and, for context, (e) peft's own mixed batches
(``adapter_names``); each figure is the median over rounds, so load from other processes on a
shared machine hits all alike. Every request is greedy with the same ``max_tokens`` and no stop condition other than EOS, so all
three runs generate comparable token counts (the count is measured, not assumed). The last line
is exactly ``mixed_vs_single=<r> mixed_vs_naive=<r> load64_vs_load1=<r>``.
Targets: mixed_vs_single >= 0.8, mixed_vs_naive >= 4, load64_vs_load1 <= 1.1.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from tests.support.models import make_tiny_causal_lm  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PROMPT_WORDS = [
    "the",
    "cat",
    "eats",
    "an",
    "apple",
    "today",
    "the",
    "model",
    "serves",
    "many",
    "tokens",
    "a",
    "dog",
    "sees",
    "the",
    "river",
    "near",
    "the",
    "sea",
    "after",
    "lunch",
    "our",
    "team",
    "builds",
    "the",
    "green",
    "house",
    "with",
    "care",
    "the",
    "robot",
    "answers",
    "every",
    "morning",
]


def make_adapters(base: Path, out: Path, count: int, *, r: int = 8) -> list[Path]:
    """Save ``count`` distinct random LoRA adapters (r, q/k/v/o) over ``base``.

    One peft model is re-initialised per adapter (``torch.manual_seed(i)``, A and B ~ N(0, 0.05))
    and saved with ``save_pretrained``, which is much faster than building a model per adapter.

    Returns:
        The adapter folders.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=r, lora_alpha=2 * r, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM"
        ),
    )
    paths = []
    for i in range(count):
        torch.manual_seed(1000 + i)
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_" in name:
                    param.normal_(0.0, 0.05)
        path = out / f"adapter-{i:03d}"
        peft_model.save_pretrained(path)
        paths.append(path)
    return paths


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts of 6-16 words drawn from a fixed word list (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    prompts = []
    for _ in range(n):
        length = int(torch.randint(6, 17, (1,), generator=gen))
        idx = torch.randint(0, len(PROMPT_WORDS), (length,), generator=gen).tolist()
        prompts.append(" ".join(PROMPT_WORDS[i] for i in idx))
    return prompts


class ServerRuns:
    """One ModelServer with the 8 adapters resident; timed rounds of submitted-at-once traffic."""

    def __init__(self, base: Path, adapters: dict[str, Path], batch_size: int) -> None:
        from lorafleet_serving.server.factory import build_model_server

        self.server = build_model_server(
            base,
            "text-generation",
            max_adapters=len(adapters),
            max_batch_size=batch_size,
            batch_wait_timeout_s=0.005,
            max_concurrent_batches=1,
        )
        self.adapters = adapters
        self.batch_size = batch_size

    async def start(self, prompts: list[str]) -> None:
        """Register and load the adapters, then one untimed warm-up round."""
        from lorafleet_serving.types import GenerateRequest

        registry = {n: {"path": str(p)} for n, p in self.adapters.items()}
        await self.server.reconfigure({"adapters": registry})
        for name in self.adapters:
            await self.server.ensure_adapter(name)
        names = list(self.adapters)
        warm = [
            GenerateRequest(p, adapter=names[i % len(names)], max_tokens=4)
            for i, p in enumerate(prompts[: self.batch_size])
        ]
        await asyncio.gather(*[self.server.generate(r) for r in warm])

    async def run(
        self, prompts: list[str], names: list[str], max_tokens: int
    ) -> tuple[float, int, str]:
        """Submit all requests at once; (seconds, generated tokens, scheduling summary)."""
        from lorafleet_serving.types import GenerateRequest

        requests = [
            GenerateRequest(p, adapter=n, max_tokens=max_tokens)
            for p, n in zip(prompts, names, strict=True)
        ]
        before = self.server.stats()
        t0 = time.perf_counter()
        results = await asyncio.gather(*[self.server.generate(r) for r in requests])
        elapsed = time.perf_counter() - t0
        after = self.server.stats()
        steps = after["generation_steps"] - before["generation_steps"]
        joined = after["joined"] - before["joined"]
        batches = after["generation_batches"] - before["generation_batches"]
        return (
            elapsed,
            sum(r.completion_tokens for r in results),
            f"{batches} batches, {joined} joins, {steps} decode steps",
        )


class NaivePeft:
    """Plain peft, one request at a time, ``set_adapter`` switching, HF ``generate``."""

    def __init__(self, base: Path, adapters: dict[str, Path]) -> None:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        items = list(adapters.items())
        self.model = PeftModel.from_pretrained(model, str(items[0][1]), adapter_name=items[0][0])
        for name, path in items[1:]:
            self.model.load_adapter(str(path), adapter_name=name)
        self.model.eval()

    def one(self, prompt: str, name: str, new: int) -> int:
        """Serve one request; returns the number of generated tokens."""
        self.model.set_adapter(name)
        ids = self.tok([prompt], return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(
                **ids, max_new_tokens=new, do_sample=False, pad_token_id=self.tok.pad_token_id
            )
        return out.shape[1] - ids.input_ids.shape[1]

    def mixed_batches(
        self, prompts: list[str], names: list[str], max_tokens: int, batch_size: int
    ) -> tuple[float, int]:
        """peft's own mixed-adapter batches (``generate(adapter_names=...)``); (seconds, tokens).

        For context only: this is the path the issue measured at about 0.4x of a one-adapter
        batch (peft loops over the adapters of a batch in Python in every layer).
        """
        self.tok.padding_side = "left"
        t0 = time.perf_counter()
        tokens = 0
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            batch = self.tok(chunk, return_tensors="pt", padding=True)
            with torch.inference_mode():
                out = self.model.generate(
                    **batch,
                    adapter_names=names[start : start + batch_size],
                    max_new_tokens=max_tokens,
                    min_new_tokens=max_tokens,
                    do_sample=False,
                    pad_token_id=self.tok.pad_token_id,
                )
            tokens += (out.shape[1] - batch.input_ids.shape[1]) * len(chunk)
        return time.perf_counter() - t0, tokens

    def run(self, prompts: list[str], names: list[str], max_tokens: int) -> tuple[float, int]:
        """Serve the requests one after the other; (seconds, generated tokens)."""
        t0 = time.perf_counter()
        tokens = sum(self.one(p, n, max_tokens) for p, n in zip(prompts, names, strict=True))
        return time.perf_counter() - t0, tokens


def load_times(
    base: Path, paths: list[Path], repeats: int
) -> tuple[float, list[float], list[float]]:
    """(very first load, loads with 0 resident, loads with 63 resident), seconds.

    Two engines with 64 slots: one empty, one holding 63 adapters. Repetitions alternate between
    them (load, time, unload), so background load on a shared machine hits both alike. "Load"
    is :meth:`TransformersEngine.load_adapter`: peft reads and injects the adapter, its weights
    are copied into the stacked slot and peft's copy is dropped.
    """
    from lorafleet_serving.engine.transformers_engine import TransformersEngine

    empty = TransformersEngine(base, "text-generation", max_adapters=len(paths))
    full = TransformersEngine(base, "text-generation", max_adapters=len(paths))

    def timed(engine: TransformersEngine, name: str, path: Path) -> float:
        gc.collect()
        t0 = time.perf_counter()
        engine.load_adapter(name, path)
        elapsed = time.perf_counter() - t0
        engine.unload_adapter(name)
        return elapsed

    very_first = timed(empty, "first", paths[0])
    for i, path in enumerate(paths[:-1]):
        full.load_adapter(f"resident-{i}", path)
    first, last = [], []
    for _ in range(repeats):
        first.append(timed(empty, "one", paths[-1]))
        last.append(timed(full, "sixty-fourth", paths[-1]))
    return very_first, first, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small run, under 3 minutes on 2 cores"
    )
    parser.add_argument("--requests", type=int, help="requests per throughput run")
    parser.add_argument("--max-tokens", type=int, help="tokens generated per request")
    parser.add_argument("--batch-size", type=int, default=16, help="max_batch_size of the server")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for every run (default 1: on a small shared machine extra "
        "threads of a tiny model only spin against other processes; 0 = torch's default)",
    )
    args = parser.parse_args(argv)
    n_requests = args.requests or (128 if args.quick else 256)
    max_tokens = args.max_tokens or (32 if args.quick else 64)
    repeats = 15 if args.quick else 41
    rounds = 5 if args.quick else 7
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lorafleet-bench-") as tmp:
        root = Path(tmp)
        base = make_tiny_causal_lm(root / "base", seed=0)
        paths = make_adapters(base, root / "adapters", 64)
        adapters = {f"a{i}": paths[i] for i in range(8)}
        prompts = make_prompts(n_requests)
        mixed_names = [f"a{i % 8}" for i in range(n_requests)]
        single_names = ["a0"] * n_requests
        print(
            f"model: tiny Llama (hidden 64, 4 layers, vocab 512); 8 adapters r=8 on {'/'.join(TARGETS)}; "
            f"{n_requests} requests x max_tokens={max_tokens}; max_batch_size={args.batch_size}; "
            f"torch threads={torch.get_num_threads()}",
            flush=True,
        )
        naive = NaivePeft(base, adapters)
        naive.one(prompts[0], "a0", 4)  # warm-up
        n_naive = max(8, n_requests // 4)
        # Rounds alternate (a), (b), (c) so that load from other processes on a shared machine
        # hits all three alike; each figure is the median over rounds.
        rates: dict[str, list[float]] = {"mixed": [], "single": [], "naive": [], "peft": []}
        info: dict[str, tuple[int, float, Any]] = {}

        async def serve_rounds() -> None:
            runs = ServerRuns(base, adapters, args.batch_size)
            try:
                await runs.start(prompts)
                for _ in range(rounds):
                    for label, names in (("mixed", mixed_names), ("single", single_names)):
                        secs, toks, batches = await runs.run(prompts, names, max_tokens)
                        rates[label].append(toks / secs)
                        info[label] = (toks, secs, batches)
                    secs, toks = naive.run(prompts[:n_naive], mixed_names[:n_naive], max_tokens)
                    rates["naive"].append(toks / secs)
                    info["naive"] = (toks, secs, n_naive)
                    secs, toks = naive.mixed_batches(
                        prompts[: 2 * args.batch_size],
                        mixed_names[: 2 * args.batch_size],
                        max_tokens,
                        args.batch_size,
                    )
                    rates["peft"].append(toks / secs)
            finally:
                await runs.server.close()

        asyncio.run(serve_rounds())
        very_first, loads1, loads64 = load_times(base, paths, repeats)
    # timeit's convention: the minimum is the best estimate of the cost itself, since other
    # processes only ever add time; the medians are printed alongside.
    load1, load64 = min(loads1), min(loads64)

    mixed_tps, single_tps, naive_tps = (
        statistics.median(rates[k]) for k in ("mixed", "single", "naive")
    )
    tm, ts, tn = info["mixed"], info["single"], info["naive"]
    print(
        f"(a) mixed over 8 adapters : median {mixed_tps:8.1f} tok/s over {rounds} rounds "
        f"(last round {tm[0]} tokens in {tm[1]:.2f} s; {tm[2]})"
    )
    print(
        f"(b) single adapter        : median {single_tps:8.1f} tok/s over {rounds} rounds "
        f"(last round {ts[0]} tokens in {ts[1]:.2f} s; {ts[2]})"
    )
    print(
        f"(c) naive peft set_adapter: median {naive_tps:8.1f} tok/s over {rounds} rounds "
        f"(last round {tn[0]} tokens in {tn[1]:.2f} s, {tn[2]} requests one by one)"
    )
    peft_tps = statistics.median(rates["peft"])
    print(
        f"(e) for context, peft's own mixed batches (adapter_names), same batch size: median "
        f"{peft_tps:8.1f} tok/s = {peft_tps / single_tps:.2f}x of (b)"
    )
    print(
        f"(d) adapter load: very first {very_first * 1000:.1f} ms (wraps the model in peft); "
        f"with 0 resident min {load1 * 1000:.1f} / median {statistics.median(loads1) * 1000:.1f} ms; "
        f"with 63 resident min {load64 * 1000:.1f} / median {statistics.median(loads64) * 1000:.1f} ms "
        f"({repeats} alternating repetitions each; the ratio uses the minima)"
    )
    print(f"total benchmark time {time.perf_counter() - started:.1f} s")
    print(
        f"mixed_vs_single={mixed_tps / single_tps:.2f} mixed_vs_naive={mixed_tps / naive_tps:.2f} "
        f"load64_vs_load1={load64 / load1:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
