"""A third engine, defined outside qwen_deploy: the proof that the Engine interface holds.

It is loaded the way any plugin is (QWEN_DEPLOY_ENGINE_MODULES=tests.plugins.standin_engine) and touches
nothing outside this file and its server (standin_server.py, a small OpenAI-compatible HTTP server that
serves a GGUF's name; it stands in for an inference engine, it does not run the model). test_engine_plugin.py
plans with it, renders a compose file and a systemd unit for it, and launches and stops it through `up`,
`status` and `down`, with no edit anywhere in qwen_deploy.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from qwen_deploy.candidates import Candidate, Request, decide_context, ram_budget, served_name, target
from qwen_deploy.engines.base import ArgReader, Container, Engine
from qwen_deploy.hardware.types import Hardware
from qwen_deploy.memory import MemoryEstimate, kv_bytes_per_token
from qwen_deploy.model.types import ModelSpec

SERVER = Path(__file__).with_name("standin_server.py")
OVERHEAD_BYTES = 64 * 1024**2  # the stand-in's own figure for its process


class StandIn(Engine):
    name = "standin"
    label = "Stand-in"
    formats = ("gguf",)
    kv_types = ("f16",)
    context_step = 256
    ready_path = "/health"
    api_key_env = "STANDIN_API_KEY"
    stages = ((r"standin: loading", "loading weights"), (r"standin: serving", "serving"))
    diagnoses = ((r"standin: cannot read", "model-unreadable"),)
    install_hint = "it is part of qwen-deploy's tests (tests/plugins)."
    start_seconds = 5.0

    def candidates(self, model: ModelSpec, hardware: Hardware, request: Request) -> list[Candidate]:
        out = []
        for art in model.artifacts:
            if art.format != "gguf":
                continue
            per_token = kv_bytes_per_token(model.layers, model.kv_heads, model.head_dim, "f16")
            budget = ram_budget(hardware)
            free = budget - art.weights_bytes - OVERHEAD_BYTES
            longest = min(model.max_context, max(0, free // per_token) // self.context_step * self.context_step)
            context, fits, why, short = decide_context(request, model, longest, per_token)
            kv = per_token * context
            total = art.weights_bytes + kv + OVERHEAD_BYTES
            memory = MemoryEstimate(
                budget_bytes=budget, weights_bytes=art.weights_bytes, kv_bytes_per_token=per_token,
                kv_cache_bytes=kv, overhead_bytes=OVERHEAD_BYTES, total_bytes=total, kv_capacity_tokens=context,
            )  # fmt: skip
            out.append(
                Candidate(
                    engine=self.name,
                    device="cpu",
                    precision=art.precision,
                    artifact=art,
                    kv_cache_dtype="f16",
                    context=context,
                    max_context=longest,
                    concurrency=1.0,
                    tensor_parallel_size=1,
                    replicas=1,
                    fits=fits,
                    reason=why or f"stand-in at {context:,} tokens",
                    memory=memory,
                    decode_tokens_per_s=1.0,
                    served_name=served_name(model),
                    host=request.host,
                    port=request.port,
                    meets_target=fits and context >= target(request, model),
                    shortfall_bytes=short,
                    settings={"threads": 1},
                )  # fmt: skip
            )
        return out

    def engine_args(self, c: Candidate) -> dict[str, Any]:
        return {"model": c.model_ref, "alias": c.served_name, "host": c.host, "port": c.port, "ctx": c.context}

    def command(self, c: Candidate, python: str | None = None) -> list[str]:
        argv = [python or sys.executable, str(SERVER)]
        for flag, value in self.engine_args(c).items():
            argv += [f"--{flag}", str(value)]
        return argv

    def apply_args(self, c: Candidate, args: dict[str, Any], where: str, model: ModelSpec) -> Candidate:
        r = ArgReader(args, where)
        r.text("model", c.model_ref)
        context = r.integer("ctx", c.context, 1, model.max_context)
        alias = r.text("alias", c.served_name, 256)
        host = r.text("host", c.host, 253)
        port = r.integer("port", c.port, 1, 65535)
        r.done()
        return replace(c, context=context, served_name=alias, host=host, port=port)

    def container(self, c: Candidate, model_file: str | None, all_replicas: bool = True, *, model=None) -> Container:
        model = model_file or c.model_ref
        args = [
            "--model",
            model,
            "--alias",
            c.served_name,
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--ctx",
            str(c.context),
        ]
        return Container(
            image="registry.example.org/standin:1", args=args, port=8080, uid=65532, key_var=self.api_key_env,
            memory_request_bytes=c.memory.total_bytes, memory_limit_bytes=int(c.memory.total_bytes * 1.25),
            downloads=False,
        )  # fmt: skip


ENGINE = StandIn()
