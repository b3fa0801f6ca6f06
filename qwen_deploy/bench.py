"""Measure a running OpenAI-compatible endpoint (`bench`) and prove the planned context really serves
(`verify`). Works against servers `up` started (by --name: URL, model, key and plan from the state record)
and any other (ours, vLLM, llama.cpp, Ollama) by --url.

bench streams chat completions with httpx at each concurrency level and times every token as it arrives:
time to first token, the gaps between tokens, output tokens per second, requests per second, errors, and
answers that ended without a finish reason (cut short). verify builds a prompt that fills the context to
within a margin, counted with the server's own tokenizer, and checks the server takes it and answers; with
a needle, a fact hidden at the start must come back in the answer.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen_deploy.client import Endpoint, HTTPFailure, NotOpenAI, completion_text, env_api_key, parse_url, read_api_key
from qwen_deploy.errors import QwenDeployError, UsageError

FILLER = "Note {i}: the weather report for day {i} was mild, with light wind and no rain at all.\n"
NEEDLE_WORDS = ("PELICAN", "MARIGOLD", "TANGERINE", "OBSIDIAN", "CORMORANT", "SAFFRON", "HALIBUT", "JUNIPER")


@dataclass(frozen=True)
class Target:
    base: str  # http://127.0.0.1:8000
    model: str
    api_key: str | None = None
    api_key_file: str | None = None  # where the key came from (the page reads it again per message)
    context: int | None = None
    name: str | None = None
    engine: str | None = None
    plan: dict[str, Any] | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.base, self.api_key)


def resolve_target(name: str | None, url: str | None, model: str | None, api_key_file: str | None) -> Target:
    """--name (a server `up` started) or --url (any server): base URL, model, key, context and plan."""
    from qwen_deploy import state

    if bool(name) == bool(url):
        raise UsageError("pass --name NAME (a server started by `up`) or --url http://HOST:PORT.")
    plan = None
    context = None
    engine = None
    if name:
        record = next((r for r in state.records() if r.name == state.check_name(name) and r.alive()), None)
        if record is None:
            raise QwenDeployError(f"no server named {name!r} is running; `qwen-deploy status` lists them.")
        base, model, context, engine = record.url, model or record.served_name, record.context, record.engine
        api_key_file = api_key_file or record.api_key_file
        try:
            plan = json.loads(Path(record.plan).read_text())
        except (OSError, ValueError, RecursionError):
            plan = None
    else:
        base = parse_url(str(url))
    key = read_api_key(api_key_file) if api_key_file else env_api_key()
    endpoint = Endpoint(base, key)
    try:
        listed = endpoint.get("/v1/models", timeout=10)
    except HTTPFailure as exc:
        raise QwenDeployError(f"{base} does not answer /v1/models: {exc}.") from None
    if not isinstance(listed, dict) or not isinstance(listed.get("data"), list):
        raise NotOpenAI(f"{base} is not an OpenAI-compatible server: /v1/models did not answer with a model list.")
    cards = [m for m in listed["data"] if isinstance(m, dict)]
    if not model:
        if not cards:
            raise QwenDeployError(f"{base} lists no models; pass --model NAME.")
        model = str(cards[0].get("id"))
    card = next((m for m in cards if m.get("id") == model), {})
    if context is None and isinstance(card.get("max_model_len"), int):  # vLLM says it
        context = card["max_model_len"]
    return Target(
        base=base,
        model=str(model),
        api_key=key,
        api_key_file=str(Path(api_key_file).expanduser().resolve()) if api_key_file else None,
        context=context,
        name=name,
        engine=engine,
        plan=plan,
    )


# ----------------------------------------------------------------------------- tokens


def count_tokens(target: Target, text: str) -> int:
    """Tokens in `text` by the server's own tokenizer: llama-cpp-python's /extras/tokenize/count, vLLM's
    /tokenize (a count), or llama-server's /tokenize (the tokens)."""
    endpoint = target.endpoint

    def count(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= len(text) + 16:
            raise TypeError("not a token count")  # a tokenizer gives at most about a token per character
        return value

    try:
        return count(
            endpoint.post("/extras/tokenize/count", {"input": text, "model": target.model}, timeout=120)["count"]
        )
    except (HTTPFailure, KeyError, TypeError, IndexError):
        pass
    try:
        return count(endpoint.post("/tokenize", {"model": target.model, "prompt": text}, timeout=120)["count"])
    except (HTTPFailure, KeyError, TypeError, IndexError):
        pass
    try:  # llama.cpp's own llama-server
        tokens = endpoint.post("/tokenize", {"content": text}, timeout=120)["tokens"]
        if isinstance(tokens, list) and (tokens or not text):
            return count(len(tokens))
        raise KeyError("tokens")  # an empty list for a non-empty text: not a tokenizer answer
    except (HTTPFailure, KeyError, TypeError, IndexError):
        raise QwenDeployError(
            f"{target.base} has no tokenizer endpoint (/extras/tokenize/count or /tokenize); "
            "verify needs the server's own token counts."
        ) from None


def filler(lines: int, start: int = 0) -> str:
    return "".join(FILLER.format(i=i) for i in range(start, start + lines))


def fit_lines(count: Callable[[str], int], build: Callable[[int], str], budget: int) -> tuple[str, int]:
    """The longest build(n) whose token count is at most `budget` (binary search on n; counts grow with n).

    Bounded: every piece build() adds is at least one token for any real tokenizer, so n never needs to pass
    budget + 1; a server whose counts stay flat as the text grows is not counting tokens, and that is an
    error rather than a prompt doubled until memory runs out."""
    low, high = 0, 1
    while count(build(high)) <= budget:
        if high > budget:
            raise NotOpenAI(
                f"the server's tokenizer counts {high:,} pieces of text as at most {budget:,} tokens: its token "
                "counts do not grow with the text, so the context cannot be filled by them."
            )
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if count(build(mid)) <= budget:
            low = mid
        else:
            high = mid
    text = build(low)
    return text, count(text)


# ----------------------------------------------------------------------------- verify


def run_verify(
    target: Target,
    context: int,
    needle: bool = False,
    margin: float = 0.02,
    answer_tokens: int = 16,
    timeout_s: float = 900.0,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Fill `context` to within `margin` and check the server answers (and finds the needle)."""
    if context < 64:
        raise UsageError("--context must be at least 64 tokens.")
    if not 0 < margin < 0.5:
        raise UsageError("--margin must be a fraction between 0 and 0.5, such as 0.02.")
    endpoint = target.endpoint
    # the chat template's own tokens: what a one-word message costs beyond the word
    try:
        probe = endpoint.post_json(
            "/v1/chat/completions",
            {"model": target.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
            timeout=120,
        )
    except HTTPFailure as exc:
        raise QwenDeployError(f"{target.base} did not answer a one-token chat completion: {exc}.") from None
    used = (probe.get("usage") or {}).get("prompt_tokens") if isinstance(probe.get("usage"), dict) else None
    if isinstance(used, bool) or not isinstance(used, int) or not 0 <= used <= context:
        raise NotOpenAI(f"{target.base} is not an OpenAI-compatible server: its answer has no usage.prompt_tokens.")
    overhead = max(0, used - count_tokens(target, "Hi"))
    slack = max(8, math.ceil(margin * context / 2))
    budget = context - answer_tokens - overhead - slack
    word = NEEDLE_WORDS[context % len(NEEDLE_WORDS)]
    head = f"The secret code word is {word}. Remember it.\n" if needle else ""
    question = (
        "\nQuestion: What is the secret code word? Answer with one word."
        if needle
        else "\nQuestion: Which day had a weather report? Answer briefly."
    )
    say(f"building a prompt of about {budget:,} tokens (context {context:,}) with the server's tokenizer ...")

    def count(text: str) -> int:
        return count_tokens(target, text)

    # whole filler lines first, then single words: the prompt ends within a few tokens of the budget
    rest, _ = fit_lines(count, lambda n: filler(n) + question, budget - count(head))
    text, text_tokens = fit_lines(count, lambda k: head + "All quiet. " * k + "\n" + rest, budget)
    say(f"sending {text_tokens:,} tokens ...")
    started = time.monotonic()
    result: dict[str, Any] = {
        "url": target.base,
        "model": target.model,
        "context": context,
        "margin": margin,
        "needle": word if needle else None,
    }
    try:
        answer = endpoint.post(
            "/v1/chat/completions",
            {
                "model": target.model,
                "messages": [{"role": "user", "content": text}],
                "max_tokens": answer_tokens,
                "temperature": 0,
            },
            timeout=timeout_s,
        )
    except HTTPFailure as exc:
        result.update(passed=False, prompt_tokens=text_tokens + overhead, error=str(exc))
        result["seconds"] = round(time.monotonic() - started, 2)
        return result
    content = completion_text(answer, chat=True)
    usage = answer.get("usage") if isinstance(answer, dict) and isinstance(answer.get("usage"), dict) else {}
    reported, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    prompt_tokens = reported if isinstance(reported, int) and 0 < reported <= 2 * context else text_tokens + overhead
    completion = completion if isinstance(completion, int) and 0 <= completion <= 10 * answer_tokens else 0
    filled = (prompt_tokens + answer_tokens) / context
    checks = {
        "accepted": True,
        "answered": bool(content.strip()),
        "filled": filled >= 1 - margin,
        "needle_found": (word.lower() in content.lower()) if needle else None,
    }
    result.update(
        passed=all(v for v in checks.values() if v is not None),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion,
        fill=round(filled, 4),
        answer=content,
        checks=checks,
        seconds=round(time.monotonic() - started, 2),
    )
    return result


# ----------------------------------------------------------------------------- bench


@dataclass
class Reply:
    ok: bool
    error: str | None = None
    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    tokens: int = 0
    finished: bool = False  # a finish_reason arrived (not cut short)


async def _stream_one(client: Any, target: Target, prompt: str, max_tokens: int, chat: bool = True) -> Reply:
    """One streamed request: a chat completion, or (chat=False) a plain completion of the raw prompt."""
    body: dict[str, Any] = {
        "model": target.model,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    start = time.perf_counter()
    last = None
    reply = Reply(ok=False)
    try:
        path = "/v1/chat/completions" if chat else "/v1/completions"
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread())[:200].decode(errors="replace")
                return Reply(ok=False, error=f"HTTP {response.status_code}: {detail}")
            async for line in _lines(response):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                usage = chunk.get("usage")
                for choice in chunk.get("choices") or []:
                    if (choice.get("delta") or {}).get("content") or choice.get("text"):
                        now = time.perf_counter()
                        if last is None:
                            reply.ttft_s = now - start
                        else:
                            reply.gaps_s.append(now - last)
                        last = now
                        reply.tokens += 1
                    if choice.get("finish_reason"):
                        reply.finished = True
                if usage and usage.get("completion_tokens"):
                    reply.tokens = int(usage["completion_tokens"])
    except Exception as exc:  # a dropped connection, a timeout, a malformed chunk: one failed request
        return Reply(ok=False, error=f"{type(exc).__name__}: {exc}")
    reply.ok = reply.ttft_s is not None
    if not reply.ok:
        reply.error = "no tokens streamed"
    return reply


MAX_STREAM_LINE = 1024**2  # an event line of a streamed answer; a server sending more without a newline is cut off


async def _lines(response: Any):
    """The lines of a streamed answer, each at most MAX_STREAM_LINE bytes (httpx's own line reader would keep
    buffering a line that never ends)."""
    pending = b""
    async for chunk in response.aiter_bytes():
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode(errors="replace")
        if len(pending) > MAX_STREAM_LINE:
            raise ValueError(f"a streamed line longer than {MAX_STREAM_LINE:,} bytes")
    if pending:
        yield pending.decode(errors="replace")


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


async def _run_level(
    target: Target, concurrency: int, n_requests: int, prompt: str, max_tokens: int, timeout_s: float, tick
) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    queue = list(range(n_requests))
    replies: list[Reply] = []
    # no redirects (httpx's default) and no proxy from the environment: the key goes to this server only
    client_options = {"headers": headers, "timeout": timeout_s, "limits": limits, "trust_env": False}
    async with httpx.AsyncClient(base_url=target.base, follow_redirects=False, **client_options) as client:

        async def worker() -> None:
            while queue:
                i = queue.pop()
                # a different first line per request: servers reuse a cached prompt prefix (llama-cpp-python's
                # last prompt, vLLM's prefix cache), and the same prompt again would time a cache hit
                unique = f"Request {concurrency}-{i} at {time.time_ns()}:\n{prompt}"
                replies.append(await _stream_one(client, target, unique, max_tokens))
                tick(len(replies))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ok = [r for r in replies if r.ok]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    gaps = [g for r in ok for g in r.gaps_s]
    tokens = sum(r.tokens for r in ok)
    errors = [r.error for r in replies if not r.ok]
    return {
        "concurrency": concurrency,
        "requests": n_requests,
        "ok": len(ok),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "cut_short": sum(1 for r in ok if not r.finished),
        "ttft_ms": {"p50": _ms(_pct(ttfts, 0.5)), "p95": _ms(_pct(ttfts, 0.95))},
        "itl_ms": {"p50": _ms(_pct(gaps, 0.5)), "p95": _ms(_pct(gaps, 0.95))},
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 2) if wall > 0 else None,
        "requests_per_s": round(len(ok) / wall, 3) if wall > 0 else None,
        "mean_tokens_per_request": round(statistics.mean(r.tokens for r in ok), 1) if ok else None,
        "duration_s": round(wall, 2),
    }


def bench_prompt(target: Target, prompt_tokens: int) -> tuple[str, int | None]:
    """A prompt of about `prompt_tokens` tokens (exact with a tokenizer endpoint, else ~4 characters a
    token) asking for a long answer, so the output is not cut short by the model itself."""
    ask = "\nSummarize these notes in detail, day by day."
    try:
        text, tokens = fit_lines(lambda t: count_tokens(target, t), lambda n: filler(n) + ask, prompt_tokens)
        return text, tokens
    except QwenDeployError:
        lines = max(1, prompt_tokens * 4 // len(FILLER.format(i=10)))
        return filler(lines) + ask, None


def check_bench_options(levels: list[int], prompt_tokens: int, max_tokens: int) -> None:
    if not levels or any(c < 1 or c > 1024 for c in levels):
        raise UsageError("--concurrency takes levels from 1 to 1024, such as 1,4,16.")
    if prompt_tokens < 1 or max_tokens < 1:
        raise UsageError("--prompt-tokens and --max-tokens must be at least 1.")


def run_bench(
    target: Target,
    levels: list[int],
    n_requests: int | None,
    prompt_tokens: int,
    max_tokens: int,
    timeout_s: float = 600.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    check_bench_options(levels, prompt_tokens, max_tokens)
    prompt, counted = bench_prompt(target, prompt_tokens)
    out: dict[str, Any] = {
        "url": target.base,
        "model": target.model,
        "prompt_tokens": counted,
        "max_tokens": max_tokens,
        "levels": [],
        "plan": _plan_summary(target),
    }
    for concurrency in levels:
        total = n_requests or max(4, 2 * concurrency)

        def tick(done: int, c: int = concurrency, n: int = total) -> None:
            if progress:
                progress(f"concurrency {c}: {done}/{n} requests")

        tick(0)
        out["levels"].append(asyncio.run(_run_level(target, concurrency, total, prompt, max_tokens, timeout_s, tick)))
    return out


def _plan_summary(target: Target) -> dict[str, Any] | None:
    """What the plan predicted, for a server `up` started."""
    choice = (target.plan or {}).get("choice") if target.plan else None
    if not choice:
        return None
    summary = {
        "engine": choice.get("engine"),
        "context": choice.get("context"),
        "concurrency": choice.get("concurrency"),
        "kv_capacity_tokens": (choice.get("memory") or {}).get("kv_capacity_tokens"),
        "decode_tokens_per_s": choice.get("decode_tokens_per_s"),
    }
    try:
        from qwen_deploy import engines

        summary["serving"] = engines.get(str(summary["engine"])).describe_serving(
            int(summary["context"]), float(summary["concurrency"]), int(summary["kv_capacity_tokens"])
        )
    except (QwenDeployError, TypeError, ValueError):
        summary["serving"] = None
    return summary


def progress_printer(stream=None) -> Callable[[str], None]:
    """A live line on stderr (one line per message when stderr is not a terminal)."""
    stream = stream or sys.stderr
    tty = stream.isatty()

    def show(message: str) -> None:
        stream.write(f"\r\033[K{message}" if tty else message + "\n")
        stream.flush()

    return show
