"""What a machine has, as the planner sees it: CPU, RAM, GPUs (NVIDIA through CUDA, Apple Silicon through
Metal), and the disk models are stored on. Pure types; reading and writing them lives beside (files, probe,
catalog)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

HARDWARE_SCHEMA = "qwen-deploy/hardware/v1"

# The CUDA total of a GPU whose driver-reserved memory we do not know: NVML total minus 1.5% (the median
# gap between nvidia-smi's total and torch's total_memory in the catalog's sources).
CUDA_RESERVED_FRACTION = 0.015


@dataclass(frozen=True)
class CPU:
    model: str
    physical_cores: int
    logical_cores: int
    flags: tuple[str, ...] = ()
    # Measured by `probe --measure` (GB/s, single-thread memcpy); None means "use a typical figure".
    memory_bandwidth_gbps: float | None = None


@dataclass(frozen=True)
class Memory:
    total_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    memory_total_bytes: int
    memory_free_bytes: int
    compute_capability: str  # "8.9" for CUDA; "" for Metal
    # Peak memory bandwidth from the catalog (GB/s); None when the card is not in it.
    memory_bandwidth_gbps: float | None = None
    # Total as CUDA reports it (cudaMemGetInfo; NVML total minus driver-reserved memory). vLLM budgets
    # against this. None: unknown, the planner estimates it from the NVML total.
    cuda_total_bytes: int | None = None
    # "cuda" (an NVIDIA card with its own memory) or "metal" (Apple Silicon: memory_total_bytes is the
    # working-set limit Metal allows, recommendedMaxWorkingSetSize, carved out of the unified RAM).
    backend: str = "cuda"

    @property
    def cc(self) -> tuple[int, int]:
        """(major, minor) compute capability; (0, 0) for a GPU without one (Metal)."""
        major, _, minor = self.compute_capability.partition(".")
        return (int(major), int(minor or 0)) if major.isdigit() else (0, 0)

    @property
    def cuda_total(self) -> int:
        """The total CUDA sees (what vLLM's utilization is a fraction of)."""
        if self.cuda_total_bytes:
            return self.cuda_total_bytes
        return int(self.memory_total_bytes * (1 - CUDA_RESERVED_FRACTION))

    @property
    def unified(self) -> bool:
        return self.backend == "metal"


@dataclass(frozen=True)
class Disk:
    path: str
    free_bytes: int


@dataclass(frozen=True)
class Hardware:
    cpu: CPU
    memory: Memory
    gpus: tuple[GPU, ...] = ()
    disk: Disk = field(default_factory=lambda: Disk(path="", free_bytes=0))

    def to_dict(self) -> dict[str, Any]:
        cpu: dict[str, Any] = {
            "model": self.cpu.model,
            "physical_cores": self.cpu.physical_cores,
            "logical_cores": self.cpu.logical_cores,
            "flags": list(self.cpu.flags),
        }
        if self.cpu.memory_bandwidth_gbps is not None:
            cpu["memory_bandwidth_gbps"] = self.cpu.memory_bandwidth_gbps
        gpus = []
        for gpu in self.gpus:
            entry: dict[str, Any] = {
                "index": gpu.index,
                "name": gpu.name,
                "memory_total_bytes": gpu.memory_total_bytes,
                "memory_free_bytes": gpu.memory_free_bytes,
                "compute_capability": gpu.compute_capability,
            }
            if gpu.memory_bandwidth_gbps is not None:
                entry["memory_bandwidth_gbps"] = gpu.memory_bandwidth_gbps
            if gpu.cuda_total_bytes is not None:
                entry["cuda_total_bytes"] = gpu.cuda_total_bytes
            if gpu.backend != "cuda":
                entry["backend"] = gpu.backend
            gpus.append(entry)
        return {
            "schema": HARDWARE_SCHEMA,
            "cpu": cpu,
            "memory": {"total_bytes": self.memory.total_bytes, "available_bytes": self.memory.available_bytes},
            "gpus": gpus,
            "disk": {"path": self.disk.path, "free_bytes": self.disk.free_bytes},
        }
