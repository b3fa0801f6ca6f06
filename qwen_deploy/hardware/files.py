"""Hardware files (schema qwen-deploy/hardware/v1): what `probe --json` writes and `plan --hardware FILE`
reads, so a plan can be made for a machine elsewhere. Every field is checked here, at the boundary: the
planner trusts what it gets."""

from __future__ import annotations

import os
import re
from typing import Any

from qwen_deploy import values
from qwen_deploy.errors import UsageError
from qwen_deploy.hardware.types import CPU, GPU, HARDWARE_SCHEMA, Disk, Hardware, Memory

_CC_RE = re.compile(r"^[0-9]{1,2}\.[0-9]{1,2}$")
MIN_GPU_BYTES = 1024**3
MAX_GPUS = 64
MAX_CORES = 100_000
BACKENDS = ("cuda", "metal")


def _field(data: dict[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise UsageError(f"{where}: missing '{key}'.")
    return data[key]


def _bytes(data: dict[str, Any], key: str, where: str) -> int:
    return values.integer(_field(data, key, where), f"{where}: '{key}'", 0, values.MAX_BYTES)


def _bandwidth(data: dict[str, Any], key: str, where: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    return values.number(value, f"{where}: '{key}' (GB/s)", 0.0, 100_000.0, lo_open=True)


def _cpu(data: Any, where: str) -> CPU:
    data = values.mapping(data, f"{where}: cpu")
    flags = data.get("flags", [])
    if not isinstance(flags, list) or len(flags) > 1000:
        raise UsageError(f"{where}: cpu.flags must be a list of CPU flag names.")
    for flag in flags:
        values.text(flag, f"{where}: cpu.flags entry", max_len=64)
    return CPU(
        model=values.text(_field(data, "model", f"{where}: cpu"), f"{where}: cpu.model", 256, allow_empty=True),
        physical_cores=values.integer(
            _field(data, "physical_cores", where), f"{where}: cpu.physical_cores", 1, MAX_CORES
        ),
        logical_cores=values.integer(_field(data, "logical_cores", where), f"{where}: cpu.logical_cores", 1, MAX_CORES),
        flags=tuple(flags),
        memory_bandwidth_gbps=_bandwidth(data, "memory_bandwidth_gbps", f"{where}: cpu"),
    )


def _gpu(data: Any, where: str) -> GPU:
    data = values.mapping(data, where)
    backend = data.get("backend", "cuda")
    if backend not in BACKENDS:
        raise UsageError(f"{where}: backend must be one of {', '.join(BACKENDS)}, not {values.show(backend)}.")
    cc = values.text(_field(data, "compute_capability", where), f"{where}: compute_capability", 8, allow_empty=True)
    if backend == "cuda" and not _CC_RE.match(cc):
        raise UsageError(f"{where}: compute_capability must look like '8.9', not {values.show(cc)}.")
    total = _bytes(data, "memory_total_bytes", where)
    if total < MIN_GPU_BYTES:
        raise UsageError(f"{where}: memory_total_bytes must be at least 1 GiB for a GPU that can serve a model.")
    free = _bytes(data, "memory_free_bytes", where)
    cuda_total = data.get("cuda_total_bytes")
    if cuda_total is not None:
        cuda_total = values.integer(cuda_total, f"{where}: 'cuda_total_bytes'", MIN_GPU_BYTES, total)
    return GPU(
        index=values.integer(_field(data, "index", where), f"{where}: index", 0, 1024),
        name=values.text(_field(data, "name", where), f"{where}: name", 256),
        memory_total_bytes=total,
        memory_free_bytes=min(free, total),
        compute_capability=cc,
        memory_bandwidth_gbps=_bandwidth(data, "memory_bandwidth_gbps", where),
        cuda_total_bytes=cuda_total,
        backend=backend,
    )


def hardware_from_dict(data: Any, where: str = "hardware file") -> Hardware:
    """Validate a hardware mapping (schema qwen-deploy/hardware/v1) into a Hardware."""
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a mapping with schema {HARDWARE_SCHEMA}, got {type(data).__name__}.")
    schema = data.get("schema")
    if schema != HARDWARE_SCHEMA:
        raise UsageError(
            f"{where}: schema is {values.show(schema)}; expected {HARDWARE_SCHEMA!r} (write one with `probe --json`)."
        )
    cpu = _cpu(_field(data, "cpu", where), where)
    mem_d = values.mapping(_field(data, "memory", where), f"{where}: memory")
    total = _bytes(mem_d, "total_bytes", f"{where}: memory")
    if total < 1:
        raise UsageError(f"{where}: memory.total_bytes must be more than zero.")
    memory = Memory(total_bytes=total, available_bytes=min(total, _bytes(mem_d, "available_bytes", f"{where}: memory")))
    gpus_d = _field(data, "gpus", where)
    if not isinstance(gpus_d, list) or len(gpus_d) > MAX_GPUS:
        raise UsageError(f"{where}: gpus must be a list of at most {MAX_GPUS} GPUs.")
    gpus = tuple(_gpu(g, f"{where}: gpus[{i}]") for i, g in enumerate(gpus_d))
    if len({g.backend for g in gpus}) > 1:
        raise UsageError(f"{where}: gpus mixes CUDA and Metal devices; one machine has one kind.")
    disk_d = values.mapping(data.get("disk") or {"path": "", "free_bytes": 0}, f"{where}: disk")
    disk = Disk(
        path=values.text(_field(disk_d, "path", f"{where}: disk"), f"{where}: disk.path", 4096, allow_empty=True),
        free_bytes=_bytes(disk_d, "free_bytes", f"{where}: disk"),
    )
    return Hardware(cpu=cpu, memory=memory, gpus=gpus, disk=disk)


def load_hardware(path: str | os.PathLike[str]) -> Hardware:
    """Read a hardware file (YAML or JSON) written by `probe --json`."""
    from qwen_deploy.resources import load_yaml_file

    return hardware_from_dict(load_yaml_file(path, what="hardware file"), where=str(path))
