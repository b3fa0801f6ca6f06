"""The GPU catalog (profiles/gpus.yaml) and the shorthand flags that describe a machine without probing it:
`--gpu NAME` (repeatable, with a count: '2xL4', 'L4x2', '2 x L4'), `--vram`, `--ram`, `--cpus`, `--no-gpu`."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from qwen_deploy import values
from qwen_deploy.errors import UsageError
from qwen_deploy.hardware.files import MIN_GPU_BYTES
from qwen_deploy.hardware.types import GPU, Hardware, Memory
from qwen_deploy.units import parse_size


@dataclass(frozen=True)
class CatalogGPU:
    key: str
    name: str  # as NVML (or Metal) reports it
    aliases: tuple[str, ...]
    memory_total_bytes: int  # NVML total; for Apple Silicon the Metal working set of its unified memory
    compute_capability: str
    memory_bandwidth_gbps: float
    source: str
    cuda_total_bytes: int | None = None
    backend: str = "cuda"
    unified_memory_bytes: int | None = None  # Apple Silicon: the Mac's RAM, shared by CPU and GPU


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower().replace("nvidia", "").replace("geforce", ""))


def gpu_catalog() -> tuple[CatalogGPU, ...]:
    from qwen_deploy.resources import load_profile_data

    return tuple(
        CatalogGPU(
            key=key,
            name=entry["name"],
            aliases=tuple(str(a) for a in entry.get("aliases", ())),
            memory_total_bytes=int(entry["memory_total_bytes"]),
            compute_capability=str(entry["compute_capability"]),
            memory_bandwidth_gbps=float(entry["memory_bandwidth_gbps"]),
            source=entry["source"],
            cuda_total_bytes=entry.get("cuda_total_bytes"),
            backend=entry.get("backend", "cuda"),
        )
        for key, entry in load_profile_data("gpus")["gpus"].items()
    )


def find_catalog_gpu(
    name: str, catalog: tuple[CatalogGPU, ...] | None = None, memory_bytes: int | None = None
) -> CatalogGPU | None:
    """The catalog entry whose key, NVML name or an alias matches `name` (case and punctuation ignored).
    Some cards share a name across memory sizes (RTX 3060 8/12 GB, RTX 4060 Ti 8/16 GB ...): with the memory
    the driver reports, the entry closest to it wins; without, the first (the catalog lists the common one
    first)."""
    wanted = _norm(name)
    if not wanted:
        return None
    found = [
        entry
        for entry in (catalog if catalog is not None else gpu_catalog())
        if wanted in {_norm(entry.key), _norm(entry.name), *(_norm(a) for a in entry.aliases)}
    ]
    if not found:
        return None
    if memory_bytes is None:
        return found[0]
    return min(found, key=lambda e: abs(e.memory_total_bytes - memory_bytes))


def lookup_gpu(name: str, catalog: tuple[CatalogGPU, ...] | None = None) -> CatalogGPU:
    """Like find_catalog_gpu, but an unknown name is a usage error that lists the closest names."""
    import difflib

    catalog = catalog if catalog is not None else gpu_catalog()
    found = find_catalog_gpu(name, catalog)
    if found:
        return found
    if re.search(r"radeon|\bamd\b|\barc\b|intel|instinct|\bmi[0-9]{3}", name, re.I):
        raise UsageError(
            f"{values.show(name)} is not a GPU qwen-deploy plans for: it plans NVIDIA GPUs (CUDA) and Apple Silicon "
            "(Metal). To fix: plan for the machine's CPU with --no-gpu."
        )
    names = [e.key for e in catalog]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.3)
    by_norm = {_norm(e.key): e.key for e in catalog}
    close += [by_norm[n] for n in difflib.get_close_matches(_norm(name), list(by_norm), n=3, cutoff=0.5)]
    close = list(dict.fromkeys(close))[:3]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UsageError(
        f"unknown GPU {values.show(name)}.{hint} `qwen-deploy gpus` lists the catalog; or describe it with --vram SIZE."
    )


# ----------------------------------------------------------------------------- Apple Silicon

GiB = 1024**3
_APPLE_SPEC = re.compile(
    r"^(?P<chip>.+?)\s*(?:(?P<cores>[0-9]{1,3})\s*-?\s*core\s*(?:gpu)?\s*)?(?P<gb>[0-9]{1,4})\s*gb$", re.I
)


# macOS 26 gives Metal a larger share of RAM (observed in public llama.cpp logs, not documented by Apple;
# tests/data/metal_working_set.yaml): RAM below which each share applies.
_MACOS26_SHARES = ((9 * GiB, (2, 3)), (32 * GiB, (74, 100)), (64 * GiB, (78, 100)), (128 * GiB, (81, 100)),
                   (256 * GiB, (84, 100)), (1 << 62, (87, 100)))  # fmt: skip


def metal_working_set_bytes(ram_bytes: int, wired_limit_mb: int | None = None, macos: str = "classic") -> int:
    """What Metal lets one process keep resident (MTLDevice.recommendedMaxWorkingSetSize), as macOS 13-15
    set it by default: 2/3 of RAM up to 32 GB, 3/4 from 36 GB (public llama.cpp/Ollama logs: 8 GB -> 5461 MiB,
    16 GB -> 10922.67 MiB, 32 GB -> 21845.34 MiB, 36 GB -> 27648 MiB, 64 GB -> 49152 MiB, 128 GB -> 98304 MiB;
    tests/data/metal_working_set.yaml). macOS 26 gives a larger share (0.74-0.87); the older, lower rule is
    the default so that no plan fits on paper and fails on the Mac (macos="26" for the newer share, which
    probe uses on a Mac running it). `sysctl iogpu.wired_limit_mb=N` (when set) makes Metal report exactly N MiB."""
    if wired_limit_mb:
        return wired_limit_mb * 1024**2
    if macos == "26":  # whole MiB: floor(RAM in MiB × share), as every macOS 26 print shows
        fraction = next(share for below, share in _MACOS26_SHARES if ram_bytes < below)
        return ram_bytes // 1024**2 * fraction[0] // fraction[1] * 1024**2
    fraction = (2, 3) if ram_bytes <= 32 * GiB else (3, 4)
    return ram_bytes * fraction[0] // fraction[1]  # 16 GB: 11,453,246,122 B ('11453.25 MB' in the logs)


def _apple_chips() -> dict:
    from qwen_deploy.resources import load_profile_data

    return load_profile_data("apple")["chips"]


def apple_gpu(spec: str) -> CatalogGPU | None:
    """'M2 16GB', 'M3 Max 64GB', 'Apple M4 Pro 24 GB', 'M3 Ultra 80-core 96GB' -> a Metal GPU with that Mac's
    working set; None when `spec` names no Apple chip. A chip without its memory, or with a size Apple did
    not sell, is a usage error that lists the sizes."""
    m = _APPLE_SPEC.match(spec.strip())
    chip_text = m.group("chip") if m else spec.strip()
    wanted = _norm(chip_text)
    for key, chip in _apple_chips().items():
        if wanted not in {_norm(key), _norm(chip["name"]), *(_norm(str(a)) for a in chip.get("aliases", ()))}:
            continue
        sold = sorted({g for v in chip["variants"] for g in v["memory_options_gb"]})
        sizes = ", ".join(f"{key} {g}GB" for g in sold)
        if m is None:
            raise UsageError(f"--gpu {values.show(spec)}: a Mac's limits depend on its memory; name it, as {sizes}.")
        gb, cores = int(m.group("gb")), int(m.group("cores")) if m.group("cores") else None
        if gb not in sold:
            raise UsageError(f"--gpu {values.show(spec)}: Apple sold the {key} with {', '.join(map(str, sold))} GB.")
        variants = [v for v in chip["variants"] if gb in v["memory_options_gb"] and cores in (None, v["gpu_cores"])]
        if not variants:
            raise UsageError(f"--gpu {values.show(spec)}: no {key} with {cores} GPU cores was sold with {gb} GB.")
        variant = min(variants, key=lambda v: v["memory_bandwidth_gbps"])  # the slower part when both exist
        ram = gb * GiB  # Apple's "GB" of RAM are GiB
        return CatalogGPU(
            key=f"{key} {gb}GB",
            name=chip["name"],
            aliases=(),
            memory_total_bytes=metal_working_set_bytes(ram),
            compute_capability="",
            memory_bandwidth_gbps=float(variant["memory_bandwidth_gbps"]),
            source=chip.get("source", ""),
            backend="metal",
            unified_memory_bytes=ram,
        )
    return None


# A count is written before the name ('2xL4', '2 x L4', '2×L4') or after it ('L4x2', 'L4 x 2'). After the
# name, the 'x' must follow a digit, a closing parenthesis or a space, so the X of 'RTX 3080' or 'GTX 1650' is
# never read as a multiplier.
_COUNT_BEFORE = re.compile(r"^([0-9]{1,3})\s*[xX×*]\s*(\S.*)$")
_COUNT_AFTER = re.compile(r"^(.*[0-9)\s])[xX×*]\s*([0-9]{1,3})$")
MAX_GPU_COUNT = 64


def _split_count(spec: str) -> tuple[int, str] | None:
    if m := _COUNT_BEFORE.match(spec):
        return int(m.group(1)), m.group(2).strip()
    if m := _COUNT_AFTER.match(spec):
        return int(m.group(2)), m.group(1).strip()
    return None


def parse_gpu_spec(spec: str, catalog: tuple[CatalogGPU, ...] | None = None) -> tuple[int, CatalogGPU]:
    """'RTX 4090' -> (1, entry); '2xL4', '2 x L4', 'L4x2' or 'L4 x 2' -> (2, entry)."""
    text = values.text(spec, "--gpu", 200, allow_empty=True).strip()
    if not text:
        raise UsageError("--gpu names no GPU; write a catalog name such as 'RTX 4090' or '2xL4'.")
    if (mac := apple_gpu(text)) is not None:
        return 1, mac
    catalog = catalog if catalog is not None else gpu_catalog()
    whole = find_catalog_gpu(text, catalog)
    if whole:  # a catalog name as it is ('RTX 3080', 'GTX 1650'): no count to read
        return 1, whole
    split = _split_count(text)
    if split is None:
        return 1, lookup_gpu(text, catalog)  # raises with the closest names
    count, name = split
    if _split_count(name) is not None and find_catalog_gpu(name, catalog) is None:
        raise UsageError(f"--gpu {values.show(spec)} has more than one count; write one, as '2xL4' or 'L4x2'.")
    if not 1 <= count <= MAX_GPU_COUNT:
        raise UsageError(f"--gpu {values.show(spec)}: the count must be from 1 to {MAX_GPU_COUNT} ('2xL4' or 'L4x2').")
    return count, lookup_gpu(name, catalog)


# A GPU described only by --vram: Ada-class capabilities and a mid-range bandwidth (assumptions, stated
# in the plan's reason and README; pass --gpu NAME for a real card).
GENERIC_GPU_CC = "8.9"
GENERIC_GPU_BANDWIDTH_GBPS = 500.0


def _catalog_gpu(index: int, entry: CatalogGPU) -> GPU:
    return GPU(
        index=index,
        name=entry.name,
        memory_total_bytes=entry.memory_total_bytes,
        memory_free_bytes=entry.memory_total_bytes,
        compute_capability=entry.compute_capability,
        memory_bandwidth_gbps=entry.memory_bandwidth_gbps,
        cuda_total_bytes=entry.cuda_total_bytes,
        backend=entry.backend,
    )


def simulate(
    base: Hardware,
    gpus: tuple[str, ...] = (),
    vram: str | None = None,
    ram: str | None = None,
    cpus: int | None = None,
    no_gpu: bool = False,
) -> Hardware:
    """`base` (this machine or a file) with the parts the shorthand flags describe replaced.

    --gpu NAME (repeatable, '2xL4') replaces the GPU list with catalog cards; --vram SIZE gives them
    (or one generic GPU) that much memory; --ram sets total and available RAM; --cpus the core count;
    --no-gpu removes all GPUs. Simulated GPUs are idle: free memory equals total.
    """
    if no_gpu and (gpus or vram is not None):
        raise UsageError("--no-gpu contradicts --gpu/--vram; pass one or the other.")
    hw = base
    if gpus or vram is not None:
        cards: list[GPU] = []
        macs: list[CatalogGPU] = []
        catalog = gpu_catalog() if gpus else ()
        for spec in gpus:
            count, entry = parse_gpu_spec(spec, catalog)
            cards += [_catalog_gpu(len(cards) + i, entry) for i in range(count)]
            if entry.unified_memory_bytes:
                macs.append(entry)
        if len(cards) > MAX_GPU_COUNT:
            raise UsageError(f"--gpu describes {len(cards)} GPUs; plan for at most {MAX_GPU_COUNT} per machine.")
        if len({c.backend for c in cards}) > 1 or sum(c.backend == "metal" for c in cards) > 1:
            raise UsageError("--gpu describes one Mac (a single Apple chip) or NVIDIA cards, not a mix.")
        unified = next((e.unified_memory_bytes for e in macs), None)
        if unified and ram is None:  # a Mac's RAM is its GPU's memory: the machine is that Mac
            hw = replace(hw, memory=Memory(total_bytes=unified, available_bytes=unified))
        if vram is not None:
            size = parse_size(vram)
            if size < MIN_GPU_BYTES:
                raise UsageError(f"--vram {vram} is less than 1 GiB; no model this tool plans fits in that.")
            if not cards:
                cards = [
                    GPU(
                        index=0,
                        name=f"GPU with {vram.strip()}",
                        memory_total_bytes=size,
                        memory_free_bytes=size,
                        compute_capability=GENERIC_GPU_CC,
                        memory_bandwidth_gbps=GENERIC_GPU_BANDWIDTH_GBPS,
                    )
                ]
            else:
                cards = [
                    replace(c, memory_total_bytes=size, memory_free_bytes=size, cuda_total_bytes=None) for c in cards
                ]
        hw = replace(hw, gpus=tuple(cards))
    if no_gpu:
        hw = replace(hw, gpus=())
    if ram is not None:
        size = parse_size(ram)
        if size <= 0:
            raise UsageError("--ram must be more than zero bytes.")
        hw = replace(hw, memory=Memory(total_bytes=size, available_bytes=size))
    if cpus is not None:
        values.integer(cpus, "--cpus", 1, 100_000)
        hw = replace(hw, cpu=replace(hw.cpu, physical_cores=cpus, logical_cores=cpus))
    return hw
