"""Parse `vllm serve` command lines with vLLM's own command-line parser (vLLM 0.33.0).

Run with the Python of the venv that scripts/vllm-parser-env creates (vLLM installed without its GPU
dependencies); it must not import qwen_deploy. stdin: a JSON list of argv lists, each
["vllm", "serve", MODEL, ...]. stdout: a JSON list with one result per argv, in order:

    {"ok": true, "args": {dest: parsed value, ...}}    or    {"ok": false, "error": "..."}

The parser is built the way `vllm serve` builds it (vllm/entrypoints/cli/main.py: a FlexibleArgumentParser
whose "serve" subparser comes from ServeSubcommand.subparser_init, i.e. make_arg_parser), and parsed
arguments go through ServeSubcommand.validate as in main(). argparse does not constrain every flag's values
(--quantization and --kv-cache-dtype take any string), so the values are then checked against vLLM's own
lists (QUANTIZATION_METHODS, KV_CACHE_DTYPES, ModelDType) and vLLM's config validators (CacheConfig,
SchedulerConfig, ParallelConfig), which vLLM runs before it loads a model.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from typing import Any, get_args

# vLLM picks its platform at import time; there is no GPU here, and the CPU platform is enough to parse.
os.environ["VLLM_TARGET_DEVICE"] = "cpu"
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries only the JSON answer

DESTS = (
    "model_tag",
    "model",
    "served_model_name",
    "host",
    "port",
    "max_model_len",
    "gpu_memory_utilization",
    "kv_cache_dtype",
    "dtype",
    "tensor_parallel_size",
    "data_parallel_size",
    "max_num_seqs",
    "max_num_batched_tokens",
    "quantization",
)


class Checker:
    def __init__(self) -> None:
        from vllm.entrypoints.cli.serve import ServeSubcommand
        from vllm.entrypoints.common.startup import VLLM_SUBCMD_PARSER_EPILOG
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        # As in vllm/entrypoints/cli/main.py main(), with the serve subcommand only; prog is what the `vllm`
        # console script gets from sys.argv[0] (the serve parser's error hints look for a prog ending " serve").
        self.parser = FlexibleArgumentParser(
            prog="vllm", description="vLLM CLI", epilog=VLLM_SUBCMD_PARSER_EPILOG.format(subcmd="[subcommand]")
        )
        subparsers = self.parser.add_subparsers(required=False, dest="subparser")
        self.serve = ServeSubcommand()
        self.serve.subparser_init(subparsers).set_defaults(dispatch_function=self.serve.cmd)

    def parse(self, argv: list[str]) -> dict[str, Any]:
        if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
            return {"ok": False, "error": f"not a list of strings: {argv!r}"}
        if argv[:2] != ["vllm", "serve"]:
            return {"ok": False, "error": f"not a `vllm serve` command: {argv[:2]!r}"}
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):
                ns = self.parser.parse_args(argv[1:])
                self.serve.validate(ns)
        except SystemExit as exc:  # argparse prints the message, then exits with status 2
            lines = [line for line in stderr.getvalue().splitlines() if "error:" in line]
            return {"ok": False, "error": "\n".join(lines) or stderr.getvalue().strip() or f"SystemExit({exc.code})"}
        except Exception as exc:  # FlexibleArgumentParser and validate raise ValueError/TypeError
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        args = {dest: getattr(ns, dest, None) for dest in DESTS}
        if args["model_tag"] is not None:  # ServeSubcommand.cmd: the positional model wins over --model
            args["model"] = args["model_tag"]
        problems = value_problems(ns)
        if problems:
            return {"ok": False, "error": "; ".join(problems), "args": args}
        return {"ok": True, "args": args}


def value_problems(ns: Any) -> list[str]:
    """What vLLM would refuse before loading the model, for the values argparse lets through."""
    from vllm.config import CacheConfig, ParallelConfig, SchedulerConfig
    from vllm.config.cache import KV_CACHE_DTYPES
    from vllm.config.model import ModelDType
    from vllm.model_executor.layers.quantization import DEPRECATED_QUANTIZATION_METHODS, QUANTIZATION_METHODS

    problems = []
    known_kv = ns.kv_cache_dtype in KV_CACHE_DTYPES
    if ns.quantization is not None:
        if ns.quantization not in QUANTIZATION_METHODS:
            problems.append(f"--quantization {ns.quantization!r} is not one of vLLM's {QUANTIZATION_METHODS}")
        elif ns.quantization in DEPRECATED_QUANTIZATION_METHODS and not ns.allow_deprecated_quantization:
            problems.append(f"--quantization {ns.quantization!r} is deprecated in vLLM")
    if not known_kv:
        problems.append(f"--kv-cache-dtype {ns.kv_cache_dtype!r} is not one of vLLM's {KV_CACHE_DTYPES}")
    if ns.dtype not in get_args(ModelDType):
        problems.append(f"--dtype {ns.dtype!r} is not one of vLLM's {list(get_args(ModelDType))}")

    def validate(name: str, build) -> None:
        try:
            with contextlib.redirect_stdout(sys.stderr):
                build()
        except Exception as exc:  # pydantic ValidationError, ValueError
            problems.append(f"{name}: {' '.join(str(exc).split())}")

    validate(  # the cache dtype again through vLLM's validator, unless already reported above
        "CacheConfig",
        lambda: CacheConfig(
            gpu_memory_utilization=ns.gpu_memory_utilization, cache_dtype=ns.kv_cache_dtype if known_kv else "auto"
        ),
    )
    validate(
        "ParallelConfig",
        lambda: ParallelConfig(tensor_parallel_size=ns.tensor_parallel_size, data_parallel_size=ns.data_parallel_size),
    )
    # vLLM fills unset batch limits and max_model_len in from the model and usage context; check when given.
    if None not in (ns.max_model_len, ns.max_num_seqs, ns.max_num_batched_tokens) and ns.max_model_len > 0:
        validate(
            "SchedulerConfig",
            lambda: SchedulerConfig(
                max_model_len=ns.max_model_len,
                is_encoder_decoder=False,
                max_num_seqs=ns.max_num_seqs,
                max_num_batched_tokens=ns.max_num_batched_tokens,
            ),
        )
    return problems


def main() -> int:
    out = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # vLLM and transformers may print; keep stdout for JSON
        argvs = json.load(sys.stdin)
        if not isinstance(argvs, list):
            print("stdin must be a JSON list of argv lists", file=sys.stderr)
            return 2
        checker = Checker()
        results = [checker.parse(argv) for argv in argvs]
    json.dump(results, out, default=str)
    out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
