"""The Chainlit app behind `qwen-deploy ui` (run by `chainlit run`, never imported by the CLI).

Each message: trim the history to the context, stream the answer from the endpoint through the OpenAI
client token by token, and on a down or unreachable server say so in the page (the next message tries
again). Settings come from the JSON file named by $QWEN_DEPLOY_UI_CONFIG, written by `qwen-deploy ui`.
"""

from __future__ import annotations

import json
import os

import chainlit as cl
import httpx
from openai import APIConnectionError, APIStatusError, APITimeoutError, AsyncOpenAI

from qwen_deploy.client import env_api_key
from qwen_deploy.ui import UISettings, estimate_tokens, header_text, parse_json_answer, trim_history

SETTINGS = UISettings.load(os.environ["QWEN_DEPLOY_UI_CONFIG"])


def _api_key() -> str:
    if SETTINGS.api_key_file:
        from qwen_deploy.launch import read_api_key

        return read_api_key(SETTINGS.api_key_file)
    return env_api_key() or "none"


async def _count(client: httpx.AsyncClient, text: str) -> int:
    """Tokens by the server's own tokenizer when it has one (llama-cpp-python, vLLM), else an estimate."""
    for path, body in (
        ("/extras/tokenize/count", {"input": text, "model": SETTINGS.model}),  # llama-cpp-python
        ("/tokenize", {"model": SETTINGS.model, "prompt": text}),  # vLLM
        ("/tokenize", {"content": text}),  # llama-server
    ):
        try:
            response = await client.post(path, json=body, timeout=10)
            if response.status_code == 200:
                data = response.json()
                if "content" in body:  # llama-server: the tokens; an empty list for real text is no answer
                    if not data["tokens"] and text:
                        continue
                    return len(data["tokens"]) + 4
                return int(data["count"]) + 4  # + the template's tokens around a message
        except httpx.HTTPError:
            break  # the server is not answering: estimate, and let the chat request report it
        except (KeyError, ValueError, TypeError):
            continue
    return estimate_tokens(text)


def _unreachable(exc: Exception) -> str:
    return (
        f"**The model server at {SETTINGS.url} is not reachable** ({type(exc).__name__}: {exc}). "
        "It may be stopped or still loading: start it with `qwen-deploy up` (or check `qwen-deploy status`), "
        "then send your message again."
    )


@cl.on_chat_start
async def start() -> None:
    cl.user_session.set("history", [])
    cl.user_session.set("counts", {})
    await cl.Message(
        content=f"Connected to **{header_text(SETTINGS)}** at {SETTINGS.url}.", author="qwen-deploy"
    ).send()


@cl.on_message
async def on_message(message: cl.Message) -> None:
    history: list[dict[str, str]] = cl.user_session.get("history") or []
    counts: dict[str, int] = cl.user_session.get("counts") or {}
    turns = [*history, {"role": "user", "content": message.content}]
    key = _api_key()  # read once per message: the file may be rotated while the page runs
    headers = {"Authorization": f"Bearer {key}"}
    answer = cl.Message(content="")
    try:
        async with httpx.AsyncClient(base_url=SETTINGS.url, headers=headers) as http:

            async def count(text: str) -> int:
                if text not in counts:
                    counts[text] = await _count(http, text)
                return counts[text]

            for text in [SETTINGS.system_prompt, *(t["content"] for t in turns)]:
                await count(text)
            budget = (SETTINGS.context or 4096) - SETTINGS.max_tokens - 16
            kept, dropped = trim_history(SETTINGS.system_prompt, turns, lambda t: counts[t], budget)
        if dropped:
            await cl.Message(
                content=f"_Dropped the {dropped} oldest message(s) to stay within the "
                f"{SETTINGS.context or 4096:,}-token context._",
                author="qwen-deploy",
            ).send()
        client = AsyncOpenAI(base_url=SETTINGS.url + "/v1", api_key=key, max_retries=0, timeout=600)
        extra = {"response_format": {"type": "json_object"}} if SETTINGS.json_mode else {}
        stream = await client.chat.completions.create(
            model=SETTINGS.model,
            messages=[{"role": "system", "content": SETTINGS.system_prompt}, *kept],
            max_tokens=SETTINGS.max_tokens,
            temperature=SETTINGS.temperature,
            stream=True,
            **extra,
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                await answer.stream_token(chunk.choices[0].delta.content)
        await answer.send()
    except (APIConnectionError, APITimeoutError, httpx.HTTPError) as exc:  # down, or gone mid-answer
        if answer.content:
            answer.content += "\n\n_(the answer was cut off)_"
            await answer.update()
        await cl.Message(content=_unreachable(exc), author="qwen-deploy").send()
        return
    except APIStatusError as exc:
        await cl.Message(
            content=f"**The model server refused the request** (HTTP {exc.status_code}): {exc.message}",
            author="qwen-deploy",
        ).send()
        return
    text = answer.content
    if SETTINGS.json_mode:
        value, why = parse_json_answer(text)
        if why is None:
            answer.content = "```json\n" + json.dumps(value, indent=2, ensure_ascii=False) + "\n```"
            await answer.update()
        else:
            await cl.Message(content=f"_The answer is not valid JSON: {why}._", author="qwen-deploy").send()
    cl.user_session.set("history", [*kept, {"role": "assistant", "content": text}])
