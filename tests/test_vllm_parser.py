"""Every `vllm serve` command the planner renders is accepted by vLLM 0.33.0's own parser, and vLLM reads
back the numbers the plan computed.

The commands of all vLLM candidates (fitting or not) of many plans (catalog GPUs, single and multi-GPU,
every model profile, contexts auto/max/8192, concurrency 1 and 8, KV auto and fp8, a
gpu_memory_utilization override, a busy GPU, a local model folder) go to tests/vllm_parser_check.py in one
subprocess, run with the Python of the venv that scripts/vllm-parser-env creates (vLLM without a GPU).

The venv's Python: $QWEN_DEPLOY_VLLM_PYTHON, else $QWEN_DEPLOY_VLLM_VENV/bin/python, else
~/.cache/qwen-deploy/vllm-parser-venv/bin/python. When it is missing the tests fail and say to run
scripts/vllm-parser-env, unless QWEN_DEPLOY_SKIP_VLLM_PARSER=1, which skips them instead.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from qwen_deploy import planner
from qwen_deploy.hardware.catalog import simulate
from qwen_deploy.hardware.types import Hardware
from qwen_deploy.model.profiles import load_profile, profile_names
from qwen_deploy.model.types import ModelSpec
from tests.conftest import make_hardware

pytestmark = pytest.mark.engine

CHECKER = Path(__file__).with_name("vllm_parser_check.py")
DEFAULT_VENV = Path.home() / ".cache" / "qwen-deploy" / "vllm-parser-venv"
GiB = 1024**3

MACHINES: tuple[tuple[str, ...], ...] = (
    ("RTX 4090",),
    ("RTX 4060",),  # 8 GB: most candidates do not fit
    ("RTX 5090",),
    ("T4",),  # CC 7.5: float16, no fp8 KV
    ("V100",),  # CC 7.0: no FP8/AWQ weights
    ("L4",),
    ("A100 80GB",),
    ("H100",),
    ("H200",),
    ("2xL4",),
    ("4xA10G",),  # tensor parallel and data-parallel replicas
    ("3xRTX 3090",),
    ("4xRTX 4060",),
    ("8xRTX 4060",),  # tensor parallel 8 where 4 cannot reach the context
    ("8xH100",),
    ("RTX 4090", "L4"),  # mixed: planned as the smaller card
)
CONTEXTS: tuple[int | str, ...] = ("auto", "max", 8192)
CONCURRENCY = (1, 8)
KV_TYPES = ("auto", "fp8")
UTILIZATION = (None, 0.8)
ENDPOINTS = (("127.0.0.1", 8000), ("0.0.0.0", 8080), ("::1", 65535), ("localhost", 1))

# Flag changes vLLM must refuse: they prove the checker can fail.
NEGATIVE: dict[str, tuple[str, str, str]] = {
    # name: (flag, bad value, a word the error must contain)
    "llama.cpp KV type": ("--kv-cache-dtype", "q8_0", "kv-cache-dtype"),
    "max-model-len not a number": ("--max-model-len", "abc", "max-model-len"),
    "unknown quantization": ("--quantization", "q4_k_m", "quantization"),
    "GGUF dtype name": ("--dtype", "f16", "dtype"),
    "utilization above 1": ("--gpu-memory-utilization", "1.5", "gpu_memory_utilization"),
    "batch below max-num-seqs": ("--max-num-batched-tokens", "1", "max_num_batched_tokens"),
}


@dataclass(frozen=True)
class Case:
    label: str
    request: planner.Request
    model: ModelSpec
    candidate: planner.Candidate


# ----------------------------------------------------------------------------- the venv's Python


def _vllm_python() -> Path:
    if explicit := os.environ.get("QWEN_DEPLOY_VLLM_PYTHON"):
        return Path(explicit)
    return Path(os.environ.get("QWEN_DEPLOY_VLLM_VENV") or DEFAULT_VENV) / "bin" / "python"


def _require_vllm_python() -> Path:
    python = _vllm_python()
    if python.is_file() and os.access(python, os.X_OK):
        return python
    message = (
        f"no vLLM parser venv ({python} is missing): run scripts/vllm-parser-env (about a minute, once), "
        "or set QWEN_DEPLOY_SKIP_VLLM_PARSER=1 to skip these tests"
    )
    if os.environ.get("QWEN_DEPLOY_SKIP_VLLM_PARSER") == "1":
        pytest.skip(message)
    pytest.fail(message, pytrace=False)


# ----------------------------------------------------------------------------- the planner's commands


def _machines() -> list[tuple[str, Hardware]]:
    base = make_hardware(ram_gib=64)
    out = [(" + ".join(gpus), simulate(base, gpus=gpus)) for gpus in MACHINES]
    out.append(("generic 12GiB", simulate(base, vram="12GiB")))
    out.append(("8xL4 at 6GiB", simulate(base, gpus=("8xL4",), vram="6GiB")))
    # Other processes hold 3 GiB of a 24 GB card: the planner lowers gpu_memory_utilization to what is free.
    busy = simulate(base, gpus=("RTX 4090",))
    gpu = busy.gpus[0]
    out.append(
        ("busy RTX 4090", replace(busy, gpus=(replace(gpu, memory_free_bytes=gpu.memory_total_bytes - 3 * GiB),)))
    )
    return out


def _models() -> list[ModelSpec]:
    models = [load_profile(name) for name in profile_names()]
    # A model already on disk: the command names the folder instead of the Hugging Face repo.
    qwen = load_profile("qwen3-4b-instruct-2507")
    local = tuple(
        replace(a, path=f"/srv/models/{a.repo.rsplit('/', 1)[-1]} ({a.precision})") if a.format == "safetensors" else a
        for a in qwen.artifacts
    )
    models.append(replace(qwen, artifacts=local))
    return models


def _cases() -> list[Case]:
    cases = []
    endpoints = itertools.cycle(ENDPOINTS)
    for (machine, hw), model in itertools.product(_machines(), _models()):
        for context, concurrency, kv, util in itertools.product(CONTEXTS, CONCURRENCY, KV_TYPES, UTILIZATION):
            host, port = next(endpoints)
            request = planner.Request(
                context=context,
                concurrency=concurrency,
                engine="vllm",
                kv_cache_dtype=kv,
                gpu_memory_utilization=util,
                host=host,
                port=port,
            )
            plan = planner.plan(model, hw, request)
            label = f"{machine} · {model.name} · context {context} · ×{concurrency} · KV {kv} · util {util}"
            for c in plan.candidates:
                if c.engine == "vllm" and c.command:
                    cases.append(Case(f"{label} · {c.label()}", plan.request, model, c))
    return cases


def _negatives(base: tuple[str, ...]) -> dict[str, list[str]]:
    out = {}
    for name, (flag, value, _) in NEGATIVE.items():
        argv = list(base)
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
        out[name] = argv
    return out


# ----------------------------------------------------------------------------- one checker run for all

_RUN: dict[str, Any] = {}


def _checked() -> dict[str, Any]:
    """Plans, negatives and vLLM's answers for all of them, from one subprocess (cached for the module)."""
    python = _require_vllm_python()
    if "error" in _RUN:
        pytest.fail(_RUN["error"], pytrace=False)
    if not _RUN:
        cases = _cases()
        negatives = _negatives(cases[0].candidate.command)
        argvs = [list(c.candidate.command) for c in cases] + list(negatives.values())
        unique = list(dict.fromkeys(map(tuple, argvs)))  # many plans render the same command
        proc = subprocess.run(
            [str(python), str(CHECKER)],
            input=json.dumps(unique),
            capture_output=True,
            text=True,
            timeout=900,
        )
        if proc.returncode != 0:
            _RUN["error"] = f"{CHECKER.name} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
            pytest.fail(_RUN["error"], pytrace=False)
        answers = json.loads(proc.stdout)
        assert len(answers) == len(unique)
        by_argv = dict(zip(unique, answers, strict=True))
        results = [by_argv[tuple(argv)] for argv in argvs]
        _RUN.update(
            cases=cases,
            results=results[: len(cases)],
            negatives={
                name: (argv, r) for (name, argv), r in zip(negatives.items(), results[len(cases) :], strict=True)
            },
        )
    return _RUN


# ----------------------------------------------------------------------------- tests


def test_the_sweep_covers_every_flag_the_planner_writes():
    cases = _checked()["cases"]
    cands = [c.candidate for c in cases]
    assert len(cands) > 1000
    assert any(c.fits for c in cands) and any(not c.fits for c in cands)
    assert {c.kv_cache_dtype for c in cands} == {"auto", "fp8"}
    assert {c.engine_args["dtype"] for c in cands} == {"bfloat16", "float16"}
    assert {c.tensor_parallel_size for c in cands} >= {1, 2, 4, 8}
    assert any(c.replicas > 1 for c in cands) and any("data-parallel-size" in c.engine_args for c in cands)
    assert {c.artifact.quantization for c in cands} >= {None, "fp8"}
    assert {c.context for c in cands} >= {8192}
    utils = {c.engine_args["gpu-memory-utilization"] for c in cands}
    assert {0.8, 0.92} <= utils and len(utils) > 2  # the override, the default, and a lowered one
    assert any(c.artifact.path for c in cands)
    assert {c.request.host for c in cases} == {h for h, _ in ENDPOINTS}


def test_vllm_accepts_every_planner_command():
    run = _checked()
    rejected = [
        f"{case.label}\n    {' '.join(case.candidate.command)}\n    -> {result['error']}"
        for case, result in zip(run["cases"], run["results"], strict=True)
        if not result["ok"]
    ]
    assert not rejected, f"vLLM 0.33.0 rejects {len(rejected)} of {len(run['cases'])} commands:\n" + "\n".join(
        rejected[:15]
    )


def test_vllm_reads_back_the_planned_values():
    run = _checked()
    mismatches = []
    for case, result in zip(run["cases"], run["results"], strict=True):
        if not result["ok"]:
            continue  # reported by test_vllm_accepts_every_planner_command
        c, request, args = case.candidate, case.request, result["args"]
        expected = {
            "model_tag": c.artifact.path or c.artifact.repo,
            "model": c.artifact.path or c.artifact.repo,
            "served_model_name": [case.model.name],  # nargs="+": vLLM keeps a list
            "host": request.host,
            "port": request.port,
            "max_model_len": c.context,
            "gpu_memory_utilization": c.engine_args["gpu-memory-utilization"],
            "kv_cache_dtype": c.kv_cache_dtype,
            "dtype": c.engine_args["dtype"],
            "tensor_parallel_size": c.tensor_parallel_size,
            "data_parallel_size": c.replicas,
            "max_num_seqs": c.engine_args["max-num-seqs"],
            "max_num_batched_tokens": c.engine_args["max-num-batched-tokens"],
            "quantization": c.artifact.quantization,
        }
        if request.gpu_memory_utilization is not None:
            assert expected["gpu_memory_utilization"] == request.gpu_memory_utilization
        assert expected["max_num_seqs"] == c.memory.counts["max_num_seqs"]
        assert expected["max_num_batched_tokens"] == c.memory.counts["max_num_batched_tokens"]
        for dest, want in expected.items():
            got = args[dest]
            if got != want or type(got) is not type(want):
                mismatches.append(f"{case.label}: {dest} parsed {got!r}, planned {want!r}")
    assert not mismatches, f"{len(mismatches)} values differ:\n" + "\n".join(mismatches[:20])


@pytest.mark.parametrize("name", list(NEGATIVE))
def test_the_checker_rejects_what_vllm_rejects(name):
    argv, result = _checked()["negatives"][name]
    _, _, word = NEGATIVE[name]
    assert result["ok"] is False, f"vLLM accepted {' '.join(argv)}"
    assert word in result["error"], result["error"]
