"""Several requests at once on the CPU: llama-server with the planned slots (`--concurrency 4`) against
llama-cpp-python's server, on the full-size synthetic Qwen3-4B Q4_K_M (4,096 tokens per slot), both started
from their plans' own commands and loaded side by side; rounds alternate between them so the machine's noise
hits both. Target at concurrency 4: llama-server's aggregate output >= 2x llama-cpp-python's, and every stream
receiving tokens while the others do.

Each stream: a distinct chat prompt, streamed, `--tokens` tokens with the end-of-sequence token banned
(logit_bias; the weights are random). Aggregate = all tokens / (the last token - the first request);
'together' = the tokens a stream received while every other stream of the round was still running.

    python bench/concurrency_cpu.py [--tokens 48] [--rounds 2] [--model PATH.gguf] [--no-write]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

from bench._report import update_section  # noqa: E402

LEVELS = (1, 2, 4)


def stream(base: str, model: str, i: int, tokens: int, eos: int, out: list, started: float) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Request {i} at {started:.3f}: list every prime you know."}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "logit_bias": {str(eos): -100},
    }
    req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})  # fmt: skip
    times = []
    with urllib.request.urlopen(req, timeout=1800) as response:
        for line in response:
            if line.startswith(b"data: {") and b'"content":"' in line.replace(b'": "', b'":"'):
                times.append(time.monotonic())
    out[i] = times


def one_round(base: str, model: str, c: int, tokens: int, eos: int) -> dict:
    out: list = [None] * c
    start = time.monotonic()
    threads = [threading.Thread(target=stream, args=(base, model, i, tokens, eos, out, start)) for i in range(c)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    streams = [s or [] for s in out]
    total = sum(len(s) for s in streams)
    end = max((s[-1] for s in streams if s), default=start)
    # a stream's tokens that arrived while every other stream had started and not yet finished
    first_end = min((s[-1] for s in streams if s), default=start)
    last_start = max((s[0] for s in streams if s), default=start)
    together = [sum(1 for t in s if last_start <= t <= first_end) for s in streams] if c > 1 else [len(streams[0])]
    return {
        "aggregate": total / (end - start) if end > start else 0.0,
        "tokens": [len(s) for s in streams],
        "together": together,
        "ttft": [round(s[0] - start, 2) if s else None for s in streams],
    }


def server_for(engine: str, model_path: Path, concurrency: int):
    from qwen_deploy.client import free_port
    from qwen_deploy.hardware.probe import probe
    from qwen_deploy.model.resolve import resolve_model
    from qwen_deploy.planner import Request, plan

    spec = resolve_model(str(model_path))
    request = Request(engine=engine, context=4096, concurrency=concurrency, port=free_port())
    choice = plan(spec, probe(), request).choice
    if choice is None:
        raise SystemExit(f"nothing fits for {engine}")
    return choice, spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    import tempfile

    from tests.engine_harness import running_server
    from tests.synthetic_gguf import full_size_qwen3_4b

    path = args.model or full_size_qwen3_4b("Q4_K_M")
    fast, spec = server_for("llama-server", path, max(LEVELS))
    slow, _ = server_for("llamacpp", path, 1)
    eos = spec.vocab_size - 1 if args.model is None else 2  # the synthetic vocabulary ends with its EOS
    work = Path(tempfile.mkdtemp(prefix="qd-conc-"))
    results: dict[str, dict[int, list[dict]]] = {"llama-server": {}, "llamacpp": {}}
    with (
        running_server(list(fast.command), fast.port, work / "llama-server.log", timeout=900) as a,
        running_server(list(slow.command), slow.port, work / "llamacpp.log", timeout=900) as b,
    ):
        servers = {"llama-server": (a.base, fast.served_name), "llamacpp": (b.base, slow.served_name)}
        for base, name in servers.values():
            one_round(base, name, 1, 2, eos)  # warm up
        for r in range(args.rounds):
            for c in LEVELS:
                order = ("llama-server", "llamacpp") if r % 2 == 0 else ("llamacpp", "llama-server")
                for engine in order:
                    base, name = servers[engine]
                    got = one_round(base, name, c, args.tokens, eos)
                    results[engine].setdefault(c, []).append(got)
                    print(engine, c, got, flush=True)
    lines = [
        f"{path.name}, {args.tokens} tokens per stream, {args.rounds} alternating rounds (medians); llama-server "
        f"`--parallel {fast.parallel}` (4,096 tokens a slot) against llama-cpp-python's server, both from their plans.",
        "",
        "| concurrency | llama-server tok/s | llama-cpp-python tok/s | ratio | tokens received together (llama-server) | "
        "first token, s (llama-cpp-python, slowest stream) |",
        "|---:|---:|---:|---:|---|---:|",
    ]
    ratio4 = 0.0
    all_streaming = True
    for c in LEVELS:
        ls = statistics.median(x["aggregate"] for x in results["llama-server"][c])
        lp = statistics.median(x["aggregate"] for x in results["llamacpp"][c])
        ratio = ls / lp if lp else float("inf")
        together = results["llama-server"][c][-1]["together"]
        slowest = max(t for x in results["llamacpp"][c] for t in x["ttft"] if t is not None)
        if c == max(LEVELS):
            ratio4 = ratio
            all_streaming = all(min(x["together"]) >= 0.5 * args.tokens for x in results["llama-server"][c])
        lines.append(f"| {c} | {ls:.2f} | {lp:.2f} | {ratio:.2f} | {together} of {args.tokens} | {slowest:.1f} |")
    met = ratio4 >= 2 and all_streaming
    lines.append(
        f"\nAt concurrency 4: **{ratio4:.2f}x** llama-cpp-python's aggregate, every stream "
        f"{'receiving tokens while the others do' if all_streaming else 'NOT all streaming together'} "
        f"(target >= 2x and all four streaming): {'met' if met else 'missed'}."
    )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        if args.model is None:
            update_section("concurrency_cpu", "python bench/concurrency_cpu.py", table)
        else:
            update_section(f"concurrency_cpu_{path.stem}", f"python bench/concurrency_cpu.py --model {path}", table)


if __name__ == "__main__":
    main()
