"""Batch-1 greedy decoding side by side with llama.cpp, on the same model, machine and process.

    python benchmarks/bench_llama_cpp.py [--repeats 7] [--compile] [--json out.json]

With --compile, ours decodes through the step built ahead of time (decode_compiled.py); the
first request of each model, which finds it or builds it, is timed apart and printed.

Needs llama-cpp-python, which is not a dependency of Repytilian (it compiles llama.cpp, a few
minutes): `pip install llama-cpp-python`. Each model is exported with `repytilian export --format
gguf`'s own code and run by both: the shipped `bpe` model (0.9M parameters, context 64) and two
random-weight models of the `hyper` shape (11M, context 256) with the bpe tokenizer, in the
classic layout (with GELU's tanh form, which llama.cpp's gpt2 computes) and the modern one
(Llama's). One request each way, turn about, `--repeats` times: the prompt `ROMEO:` and as many
greedy tokens as fill the context (nothing slides), prompt processing included, as a user waits
for it. Both use this process's torch thread count. Printed: tokens/s (median), the ratio ours /
llama.cpp, and whether the two greedy texts are the same.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from repytilian.api import load_model  # noqa: E402
from repytilian.config import ARCHS, SETTINGS  # noqa: E402
from repytilian.interop.gguf_export import export_gguf  # noqa: E402
from repytilian.language_model import LanguageModel  # noqa: E402
from repytilian.model import GPT, ModelConfig  # noqa: E402
from repytilian.runtime.cpu import cpu_name  # noqa: E402

PROMPT = "ROMEO:"


def cases() -> dict[str, LanguageModel]:
    bpe = load_model(ROOT / "models" / "shakespeare" / "bpe")
    shape = {k: v for k, v in SETTINGS["hyper"].items() if k in ModelConfig.__dataclass_fields__}

    def hyper(arch: str) -> LanguageModel:
        extra = {**ARCHS[arch], "activation": "gelu_tanh"} if arch == "classic" else ARCHS[arch]
        torch.manual_seed(0)
        model = GPT(ModelConfig(vocab_size=bpe.tokenizer.vocab_size, **{**shape, **extra, "dropout": 0.0}))
        return LanguageModel(model.eval(), bpe.tokenizer)

    return {"bpe (shipped, 0.9M, context 64)": bpe, "hyper classic (11M, context 256)": hyper("classic"),
            "hyper modern (11M, context 256)": hyper("modern")}


def measure(name: str, lm: LanguageModel, folder: Path, repeats: int, compile: bool) -> dict:
    import llama_cpp

    threads = torch.get_num_threads()
    path = export_gguf(lm.model, lm.tokenizer, folder / f"{len(os.listdir(folder))}.gguf")
    block = lm.model.config.block_size
    n = block - len(lm.tokenizer.encode(PROMPT))
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=block, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    lm.engine.compile = compile

    def ours() -> tuple[float, str]:
        t0 = time.perf_counter()
        text = lm.generate(PROMPT, n, temperature=0)
        return time.perf_counter() - t0, text

    def theirs() -> tuple[float, str]:
        t0 = time.perf_counter()
        text = llm.create_completion(PROMPT, max_tokens=n, temperature=0.0)["choices"][0]["text"]
        return time.perf_counter() - t0, text

    first = ours()[0]  # warm-up: with --compile, finding the built step or building it
    theirs()
    times: dict[str, list[float]] = {"ours": [], "llama.cpp": []}
    texts = {}
    for _ in range(repeats):
        for who, run in (("ours", ours), ("llama.cpp", theirs)):
            seconds, texts[who] = run()
            times[who].append(seconds)
    rate = {who: n / statistics.median(t) for who, t in times.items()}
    return {"model": name, "new_tokens": n, "threads": threads, "ours_tokens_per_s": rate["ours"],
            "llama_cpp_tokens_per_s": rate["llama.cpp"], "ratio": rate["ours"] / rate["llama.cpp"],
            "same_text": texts["ours"] == texts["llama.cpp"], "compiled": compile, "first_request_s": first}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", action="store_true",
                        help="ours through the decoding step built ahead of time (built the first time, then "
                             "kept in $REPYTILIAN_HOME/decoding-steps)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        print("llama-cpp-python is not installed: pip install llama-cpp-python (it builds llama.cpp, "
              "a few minutes); it is not a dependency of Repytilian", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, lm in cases().items():
            rows.append(measure(name, lm, Path(folder), args.repeats, args.compile))
            r = rows[-1]
            print(f"{name}: {r['new_tokens']} greedy tokens, ours {r['ours_tokens_per_s']:,.0f} tokens/s, "
                  f"llama.cpp {r['llama_cpp_tokens_per_s']:,.0f}: {r['ratio']:.2f}x "
                  f"(same text: {'yes' if r['same_text'] else 'no'}; our first request {r['first_request_s']:.2f} s"
                  f"{', finding or building the step' if args.compile else ''})", flush=True)
    import llama_cpp

    machine = {"cpu": cpu_name(), "torch": torch.__version__,
               "llama_cpp_python": llama_cpp.__version__, "threads": torch.get_num_threads(),
               "date": time.strftime("%Y-%m-%d")}
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
