"""Serving benchmark: mixed-adapter batches vs the bare base, one adapter and naive peft;
the HTTP path vs in-process; adapter thrashing; adapter load time.

Run from the repository root::

    python benchmarks/serving.py --quick      # about 10 minutes on 2 CPU cores

On a Llama-shaped model of realistic proportions (hidden 512, 8 layers, 8 heads, intermediate
1376, vocab 8000, random weights, made on the fly, no network; ``--shape tiny`` for the old
hidden-64 model) with 8 LoRA adapters r=16 on every linear layer (q, k, v, o, gate, up, down),
in one run, side by side. EOS is removed from the model (config, generation config and
tokenizer), so every request generates exactly ``max_tokens`` tokens on every side:

(a) generated tokens/s of uniformly mixed traffic over 8 adapters, all requests submitted at once
    to :class:`lorafleet_serving.server.model_server.ModelServer` (mixed batches, batched LoRA);
(b) the same traffic with every request naming one adapter;
(f) the same traffic on the bare base model (no adapter): the limit;
(c) a naive baseline: plain peft serving one request at a time, ``set_adapter`` switching, HF
    ``generate`` (greedy, KV cache), on a quarter of the requests (its rate is per request);
(e) for context, peft's own mixed batches (``adapter_names``);
(g) the HTTP path: the same mixed requests, ``--concurrency`` in flight, through lorafleet's
    Ray Serve app on loopback (the serve config the operator writes) vs the same requests and
    concurrency on the in-process ModelServer; streamed, the median time to the first token;
(h) thrashing through HTTP: 8 adapters in use with 4 adapter places per replica vs 8;
(d) the time to load an adapter into the 64th slot (63 resident) vs into the 1st slot of an
    engine whose stacks are already allocated (warm: one adapter resident in the last slot);
    repetitions alternate and the ratio uses the minima (timeit's convention).

Rounds alternate the in-process runs (and, separately, the HTTP and in-process runs of (g)); each
figure is the median over rounds, so load from other processes hits all alike. The last line is
exactly ``mixed_vs_base=<r> mixed_vs_single=<r> mixed_vs_naive=<r> http_vs_inproc=<r>
ttft_http_vs_inproc=<r> thrash4_vs_8=<r> load64_vs_load1=<r>``. Targets (issue 15):
mixed_vs_base >= 0.85, mixed_vs_single >= 0.9, mixed_vs_naive >= 5, http_vs_inproc >= 0.5,
ttft_http_vs_inproc <= 4, thrash4_vs_8 >= 0.6, load64_vs_load1 <= 1.1.
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

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
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


def make_adapters(base: Path, out: Path, count: int, *, r: int = 16) -> list[Path]:
    """Save ``count`` distinct random LoRA adapters (r, every linear layer) over ``base``.

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
        self,
        prompts: list[str],
        names: list[str | None],
        max_tokens: int,
        concurrency: int | None = None,
    ) -> tuple[float, int, str]:
        """Submit the requests (all at once, or ``concurrency`` in flight); (seconds, generated
        tokens, scheduling summary)."""
        from lorafleet_serving.types import GenerateRequest

        requests = [
            GenerateRequest(p, adapter=n, max_tokens=max_tokens)
            for p, n in zip(prompts, names, strict=True)
        ]
        limit = asyncio.Semaphore(concurrency or len(requests))

        async def one(req: GenerateRequest) -> Any:
            async with limit:
                return await self.server.generate(req)

        before = self.server.stats()
        t0 = time.perf_counter()
        results = await asyncio.gather(*[one(r) for r in requests])
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

    async def first_tokens(
        self, prompts: list[str], names: list[str | None], max_tokens: int, concurrency: int
    ) -> list[float]:
        """Streamed requests, ``concurrency`` in flight: seconds to each one's first token."""
        from lorafleet_serving.types import GenerateRequest

        limit = asyncio.Semaphore(concurrency)

        async def one(prompt: str, name: str | None) -> float:
            req = GenerateRequest(prompt, adapter=name, max_tokens=max_tokens)
            async with limit:
                t0 = time.perf_counter()
                first = None
                async for delta in self.server.generate_stream(req):
                    if first is None and delta.text:
                        first = time.perf_counter() - t0
                if first is None:
                    raise RuntimeError("a streamed generation carried no text")
                return first

        return list(await asyncio.gather(*[one(p, n) for p, n in zip(prompts, names, strict=True)]))


def strip_eos(model_dir: Path) -> None:
    """Remove the end-of-sequence token from a saved model (config, generation config,
    tokenizer), so generation always runs to ``max_tokens`` on every side of the benchmark."""
    import json

    for name, keys in (
        ("config.json", ("eos_token_id",)),
        ("generation_config.json", ("eos_token_id",)),
        ("tokenizer_config.json", ("eos_token",)),
        ("special_tokens_map.json", ("eos_token",)),
    ):
        path = model_dir / name
        if path.exists():
            data = json.loads(path.read_text())
            for key in keys:
                data[key] = None
            path.write_text(json.dumps(data))


def make_model(root: Path, shape: str) -> Path:
    """The benchmark's base model: ``realistic`` (hidden 512, 8 layers, 8 heads, intermediate
    1376, vocab 8000) or ``tiny`` (hidden 64, 4 layers, vocab 512); EOS removed."""
    if shape == "realistic":
        base = make_tiny_causal_lm(
            root / "base",
            seed=0,
            hidden_size=512,
            num_layers=8,
            num_heads=8,
            vocab_size=8000,
            intermediate_size=1376,
        )
    else:
        base = make_tiny_causal_lm(root / "base", seed=0)
    strip_eos(base)
    return base


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
    """(very first load, warm loads into slot 1, loads into slot 64), seconds.

    Two engines with 64 slots: one holding only an adapter in its last slot (its stacks are
    allocated: a load into slot 1 is warm), one holding 63 adapters. Repetitions alternate between
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
        empty.load_adapter(f"resident-{i}", path)
    empty.load_adapter("last-slot", paths[-2])
    for i in range(len(paths) - 1):
        empty.unload_adapter(f"resident-{i}")  # slots 1..63 free, stacks allocated
    first, last = [], []
    for _ in range(repeats):
        first.append(timed(empty, "one", paths[-1]))
        last.append(timed(full, "sixty-fourth", paths[-1]))
    return very_first, first, last


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller run (about 10 minutes)")
    parser.add_argument("--shape", choices=["realistic", "tiny"], default="realistic")
    parser.add_argument("--requests", type=int, help="requests per throughput run")
    parser.add_argument("--max-tokens", type=int, help="tokens generated per request")
    parser.add_argument("--batch-size", type=int, default=32, help="max_batch_size of the server")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="requests in flight in the HTTP comparison"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in this process (default 1; 0 = torch's default)",
    )
    args = parser.parse_args(argv)
    n_requests = args.requests or (96 if args.quick else 192)
    max_tokens = args.max_tokens or (24 if args.quick else 48)
    repeats = 9 if args.quick else 25
    rounds = 3 if args.quick else 5
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
        base = make_model(root, args.shape)
        paths = make_adapters(base, root / "adapters", 64)
        adapters = {f"a{i}": paths[i] for i in range(8)}
        prompts = make_prompts(n_requests)
        mixed: list[str | None] = [f"a{i % 8}" for i in range(n_requests)]
        single: list[str | None] = ["a0"] * n_requests
        bare: list[str | None] = [None] * n_requests
        print(
            f"model: {args.shape} Llama ({'hidden 512, 8 layers, 8 heads, intermediate 1376, vocab 8000' if args.shape == 'realistic' else 'hidden 64, 4 layers, vocab 512'}); "
            f"8 adapters r=16 on {'/'.join(TARGETS)}; {n_requests} requests x {max_tokens} tokens "
            f"(no EOS); max_batch_size={args.batch_size}; torch threads={torch.get_num_threads()}",
            flush=True,
        )
        naive = NaivePeft(base, adapters)
        naive.one(prompts[0], "a0", 4)  # warm-up
        n_naive = max(8, n_requests // 4)
        rates: dict[str, list[float]] = {
            k: [] for k in ("mixed", "single", "base", "naive", "peft", "inproc16", "http16")
        }
        info: dict[str, tuple[int, float, Any]] = {}
        ttft: dict[str, list[float]] = {"inproc": [], "http": []}
        thrash: dict[int, list[float]] = {4: [], 8: []}

        async def serve_rounds() -> None:
            runs = ServerRuns(base, adapters, args.batch_size)
            try:
                await runs.start(prompts)
                for _ in range(rounds):
                    for label, names in (("mixed", mixed), ("single", single), ("base", bare)):
                        secs, toks, batches = await runs.run(prompts, names, max_tokens)
                        rates[label].append(toks / secs)
                        info[label] = (toks, secs, batches)
                    secs, toks = naive.run(prompts[:n_naive], mixed[:n_naive], max_tokens)
                    rates["naive"].append(toks / secs)
                    info["naive"] = (toks, secs, n_naive)
                    secs, toks = naive.mixed_batches(
                        prompts[: 2 * args.batch_size],
                        mixed[: 2 * args.batch_size],
                        max_tokens,
                        args.batch_size,
                    )
                    rates["peft"].append(toks / secs)
                await http_rounds(runs)
            finally:
                await runs.server.close()

        async def http_rounds(runs: ServerRuns) -> None:
            from benchmarks.serving_http import HttpRuns

            http = HttpRuns(base, adapters, batch_size=args.batch_size, max_adapters=8)
            try:
                await http.run(prompts[:16], mixed[:16], 4, args.concurrency)  # warm-up
                c = args.concurrency
                for _ in range(rounds):
                    secs, toks = await http.run(prompts, mixed, max_tokens, c)
                    rates["http16"].append(toks / secs)
                    info["http16"] = (toks, secs, c)
                    secs, toks, batches = await runs.run(prompts, mixed, max_tokens, c)
                    rates["inproc16"].append(toks / secs)
                    info["inproc16"] = (toks, secs, batches)
                    ttft["http"] += await http.first_tokens(prompts[:32], mixed[:32], max_tokens, c)
                    ttft["inproc"] += await runs.first_tokens(
                        prompts[:32], mixed[:32], max_tokens, c
                    )
                for places in (4, 8, 4, 8) if args.quick else (4, 8) * rounds:
                    http.set_max_adapters(places)
                    secs, toks = await http.run(prompts, mixed, max_tokens, c)
                    thrash[places].append(toks / secs)
            finally:
                http.stop()

        asyncio.run(serve_rounds())
        very_first, loads1, loads64 = load_times(base, paths, repeats)
    load1, load64 = min(loads1), min(loads64)
    med = {k: statistics.median(v) for k, v in rates.items()}
    for key, label in (
        ("mixed", "(a) mixed over 8 adapters "),
        ("single", "(b) single adapter        "),
        ("base", "(f) bare base (the limit) "),
        ("naive", "(c) naive peft set_adapter"),
        ("inproc16", "(g) in-process, conc.    "),
        ("http16", "(g) HTTP (Ray Serve), conc."),
    ):
        toks, secs, extra = info[key]
        print(
            f"{label}: median {med[key]:8.1f} tok/s over {len(rates[key])} rounds "
            f"(last: {toks} tokens in {secs:.2f} s; {extra})"
        )
    print(
        f"(e) for context, peft's own mixed batches (adapter_names), same batch size: median "
        f"{med['peft']:8.1f} tok/s = {med['peft'] / med['single']:.2f}x of (b)"
    )
    ttft_http, ttft_inproc = statistics.median(ttft["http"]), statistics.median(ttft["inproc"])
    print(
        f"(g) time to first token, streamed, {args.concurrency} in flight: HTTP median "
        f"{ttft_http * 1000:.1f} ms, in-process median {ttft_inproc * 1000:.1f} ms "
        f"({len(ttft['http'])} requests each)"
    )
    t4, t8 = statistics.median(thrash[4]), statistics.median(thrash[8])
    print(f"(h) HTTP, 8 adapters in use: 4 places {t4:8.1f} tok/s, 8 places {t8:8.1f} tok/s")
    print(
        f"(d) adapter load: very first {very_first * 1000:.1f} ms; warm into slot 1 min "
        f"{load1 * 1000:.1f} / median {statistics.median(loads1) * 1000:.1f} ms; into slot 64 "
        f"min {load64 * 1000:.1f} / median {statistics.median(loads64) * 1000:.1f} ms "
        f"({repeats} alternating repetitions each; the ratio uses the minima)"
    )
    print(f"total benchmark time {time.perf_counter() - started:.1f} s")
    print(
        f"mixed_vs_base={med['mixed'] / med['base']:.2f} "
        f"mixed_vs_single={med['mixed'] / med['single']:.2f} "
        f"mixed_vs_naive={med['mixed'] / med['naive']:.2f} "
        f"http_vs_inproc={med['http16'] / med['inproc16']:.2f} "
        f"ttft_http_vs_inproc={ttft_http / ttft_inproc:.2f} "
        f"thrash4_vs_8={t4 / t8:.2f} load64_vs_load1={load64 / load1:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
