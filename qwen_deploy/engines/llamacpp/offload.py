"""llama.cpp's memory with GPU offload (CUDA full and partial offload, Apple Metal), per device. Pure.

Every rule below is read from llama.cpp as vendored in llama-cpp-python 0.3.36 (vendor/llama.cpp at
commit 0c1e57098, "webgpu: fix SSM_SCAN binding aliasing (#29750)") and checked against public startup
logs (public_logs.yaml, evaluate.py). NOTES.md has the citations; the short form is in each docstring.

Units: bytes everywhere; MiB = 2**20 (llama.cpp prints buffer sizes as bytes / 1024 / 1024).

Device names follow llama.cpp's own buffer names at this version: ``CUDA0``, ``CUDA1``, ... for NVIDIA
GPUs, ``MTL0`` for the Metal device (older builds printed ``Metal``; the name changed with the
ggml-metal device refactor, ggml/src/ggml-metal/ggml-metal-device.m: ``snprintf(..., "%s%d", "MTL",
device)``), and ``CPU`` for everything in host memory (``CPU_Mapped``/``CPU``/``CUDA_Host`` buffers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from qwen_deploy.engines.llamacpp.tensors import (  # noqa: F401 (re-exported: the offload model's vocabulary)
    FTYPE_DEFAULT,
    GGML_BLOCKS,
    KV_TYPES,
    Geometry,
    Tensor,
    as_geometry,
    gguf_tensors,
    pad,
    row_bytes,
    scaled_tensors,
    tensor_bytes,
)

MiB = 1 << 20
GiB = 1 << 30

# ----------------------------------------------------------------------------- layer placement


def gpu_layer_range(n_layer: int, n_gpu_layers: int) -> tuple[int, int]:
    """(i_gpu_start, act_gpu_layers) -- src/llama-model.cpp llama_model_base::load_tensors.

    i_gpu_start = max(n_layer + 1 - ngl, 0); act = min(ngl, n_layer + 1). Index n_layer is the output
    layer, so -ngl 1 offloads only the output layer and -ngl k the output plus the last k - 1 repeating
    layers (PR #18148 "llama: offload output layer to GPU first", merged 2025-12-17). The input layer
    (token_embd) is always on the CPU: `pimpl->dev_input = { cpu_dev, &pimpl->cpu_buft_list }`.
    A negative ngl means all (llama_model::n_gpu_layers(); llama-cpp-python maps -1 to 0x7FFFFFFF).
    """
    if n_gpu_layers < 0:
        n_gpu_layers = n_layer + 1
    return max(n_layer + 1 - n_gpu_layers, 0), min(n_gpu_layers, n_layer + 1)


def gpu_layers_label(n_layer: int, n_gpu_layers: int) -> str:
    """'k/n' as load_tensors prints it: 'offloaded %d/%d layers to GPU' with n = n_layer + 1."""
    ngl = n_layer + 1 if n_gpu_layers < 0 else n_gpu_layers
    return f"{min(ngl, n_layer + 1)}/{n_layer + 1}"


def layer_devices(
    n_layer: int, n_gpu_layers: int, gpu_names: Sequence[str], split: Sequence[float] | None = None
) -> list[str]:
    """Device of each layer 0..n_layer (the last entry is the output layer).

    Layer il is on the CPU when il < i_gpu_start; otherwise on GPU upper_bound(splits, (il - i_gpu_start) /
    act_gpu_layers), splits being the cumulative, normalised `split` (default: llama.cpp splits by each
    device's free memory; pass it, else equal shares are assumed).
    """
    i_gpu_start, act = gpu_layer_range(n_layer, n_gpu_layers)
    n_dev = len(gpu_names)
    shares = list(split) if split else [1.0] * n_dev
    total = sum(shares)
    cum, s = [], 0.0
    for x in shares:
        s += x
        cum.append(s / total)
    out = []
    for il in range(n_layer + 1):
        if n_dev == 0 or il < i_gpu_start or il - i_gpu_start >= act:
            out.append("CPU")
            continue
        frac = (il - i_gpu_start) / act
        k = next((i for i, c in enumerate(cum) if c > frac), n_dev - 1)  # std::upper_bound
        out.append(gpu_names[k])
    return out


def _tensor_layer(name: str, n_layer: int) -> int | None:
    """Layer index of a tensor: blk.N -> N, output/output_norm -> n_layer, token_embd -> None (input)."""
    if name.startswith("blk."):
        return int(name.split(".")[1])
    if name.startswith("output"):
        return n_layer
    return None


# ----------------------------------------------------------------------------- KV cache


def padded_ctx(n_ctx: int, n_seq: int = 1, kv_unified: bool = False) -> tuple[int, int]:
    """(cells per stream, streams): llama_context pads n_ctx to 256 (GGML_PAD(n_ctx, 256)); without a
    unified KV cache each of n_seq streams gets pad(n_ctx / n_seq, 256) cells (src/llama-context.cpp)."""
    n_ctx = pad(n_ctx, 256)
    if kv_unified or n_seq <= 1:
        return n_ctx, 1
    return pad(n_ctx // n_seq, 256), n_seq


def kv_layer_bytes(g: Geometry, cells: int, streams: int, type_k: str, type_v: str) -> int:
    """One layer's K and V: row_size(type_k, n_embd_k_gqa) x cells x streams, same for V
    (src/llama-kv-cache.cpp: ggml_new_tensor_3d(ctx, type_k, n_embd_k_gqa, kv_size, n_stream))."""
    tk, tv = KV_TYPES[type_k.lower()], KV_TYPES[type_v.lower()]
    return (row_bytes(tk, g.n_embd_k_gqa) + row_bytes(tv, g.n_embd_v_gqa)) * cells * streams


# ----------------------------------------------------------------------------- compute buffers


def host_compute_bytes(
    g: Geometry, *, n_kv: int, n_ubatch: int, n_outputs: int, flash_attn: bool, era: str = "vendored"
) -> int:
    """The CPU backend's compute buffer, logged 'CUDA_Host compute buffer size' when a CUDA device is in
    use (llama_context: the CPU backend's buffer type becomes the first device's host buffer type) and
    'CPU compute buffer size' on Metal (which has no host buffer type). It holds the graph inputs, which
    ggml_backend_sched always assigns to the last (CPU) backend:

      KQ mask   n_kv x U, f16 with flash attention, f32 without (llama-graph.cpp build_attn_inp_kq_mask)
      embd      inp_embd (the vector-embeddings input, PR #18550) and the token_embd GET_ROWS output,
                both n_embd x U f32 -- the token embedding stays on the CPU
      v_idxs    without flash attention V is stored transposed and set_rows takes U x n_embd_v_gqa
                int64 indices (llama-kv-cache.cpp build_input_v_idxs)
      small     inp_tokens, inp_pos (i32), k_idxs/v_idxs (i64), out_ids (i32)

    Independent of -ngl (measured 18.01 MiB at -ngl 99, 18 and 0, public calibration sweep, see NOTES).
    `era` reproduces older builds for calibration only: 'f32mask' (the mask was an f32 input cast to f16
    on the device, builds before the f16-mask change) and 'old' (also no inp_embd input, before #18550,
    and no set_rows index inputs).
    """
    u = n_ubatch
    mask_elem = 2 if (flash_attn and era == "vendored") else 4
    mask = n_kv * u * mask_elem
    embd = (1 if era == "old" else 2) * g.hidden * u * 4
    if era == "old":  # before set_rows: K/V were written with ggml_cpy into views, no index inputs
        return mask + embd + u * 4 + u * 4 + n_outputs * 4
    v_idxs = 0 if flash_attn else u * g.n_embd_v_gqa * 8
    small = u * 4 + u * 4 + u * 8 + (u * 8 if flash_attn else 0) + n_outputs * 4
    return mask + embd + v_idxs + small


def gpu_stage_bytes(
    g: Geometry, *, n_kv: int, n_ubatch: int, n_outputs: int, flash_attn: bool, backend: str, era: str = "vendored"
) -> dict[str, int]:
    """Activation peaks of the worst-case graph (n_tokens = n_ubatch, n_outputs, n_kv = padded n_ctx) on
    the device that runs the layers (llama_context::sched_reserve -> graph_reserve; ggml-alloc reuses
    memory, so the buffer is the largest stage). f32 activations, E n_embd, F n_ff, H heads of D, V vocab:

      mask copy  n_kv x U x (2 | 4): the host mask copied into the device buffer (split input), live
                 through every layer
      attention  mask + [no FA: the f32 KQ scores n_kv x U x H x 4] + (2E + 2HD) x U x 4
      mlp        mask + (3F + kE) x U x 4, k = 3 on CUDA (4 when H x D > E), 2 on Metal (Metal's graph
                 optimizer reorders nodes; fitted to one public log each, see NOTES)
      output     (V + E) x n_outputs x 4: logits plus the final norm of the output rows (the last layer
                 keeps only the n_outputs rows, inp_out_ids)

    This is the CPU formula of qwen_deploy.memory.llamacpp_compute_bytes without the inputs that live in
    the host buffer (host_compute_bytes). n_outputs is min(n_ubatch, n_outputs_max), n_outputs_max = 0 ->
    n_batch by default (llama-cpp-python), 1 in llama-server builds that set it.
    """
    u = n_ubatch
    mask = n_kv * u * (2 if flash_attn else 4)
    # copies of the small graph inputs every layer reads: inp_pos (i32), k_idxs and v_idxs (i64); without
    # flash attention v_idxs is U x n_embd_v_gqa (transposed V). Builds before set_rows had none.
    idxs = 0 if era == "old" else u * (4 + 8) + (u * 8 if flash_attn else u * g.n_embd_v_gqa * 8)
    kq = 0 if flash_attn else n_kv * u * g.attention_heads * 4
    hd = g.attention_heads * g.head_dim
    attention = mask + idxs + kq + (2 * g.hidden + 2 * hd) * u * 4
    # CUDA: 3F + 3E, and one more E-sized block when the attention output (H x D) is wider than n_embd;
    # fitted, exact on both public CUDA logs that show it (Qwen2.5-7B, H x D = E: 134.01 MiB at 2048
    # tokens; Qwen3-4B, H x D = 4096 > E = 2560: 85.01 MiB at 8192). Metal: 3F + 2E (one log, exact).
    k = 2 if backend == "metal" else 3 + (hd > g.hidden)
    mlp = mask + idxs + (3 * g.intermediate + k * g.hidden) * u * 4
    output = (g.vocab + g.hidden) * n_outputs * 4
    return {"attention": attention, "mlp": mlp, "output": output}


def cpu_stage_bytes(
    g: Geometry, *, n_kv: int, n_ubatch: int, n_outputs: int, flash_attn: bool, output_on_cpu: bool
) -> int:
    """The CPU backend's buffer when it runs whole layers itself (Metal partial offload: CPU-layer weights
    the CPU can repack live in CPU_REPACK, which is not a host buffer, so ggml_backend_sched never offloads
    their matmuls): qwen_deploy.memory.llamacpp_compute_bytes' fitted CPU formula (mask, KQ scores, 3E +
    2HD + 2HkvD / 3F + 4E activations, (V + 2E) x n_outputs logits when the output layer is on the CPU).
    Source-derived, not checked against a public log."""
    u = n_ubatch
    mask = n_kv * u * (2 if flash_attn else 4)
    kq = 0 if flash_attn else n_kv * u * g.attention_heads * 4
    attention = mask + kq + (3 * g.hidden + 2 * g.attention_heads * g.head_dim + 2 * g.n_embd_k_gqa) * u * 4
    mlp = mask + (3 * g.intermediate + 4 * g.hidden) * u * 4
    output = (g.vocab + 2 * g.hidden) * n_outputs * 4 if output_on_cpu else 0
    return max(attention, mlp, output)


OP_OFFLOAD_MIN_BATCH = 32  # ggml-cuda.cu / ggml-metal-device.m: GGML_OP_OFFLOAD_MIN_BATCH, default 32


def _largest_layer_matrices(tensors: Sequence[Tensor], il: int) -> tuple[int, int]:
    """(largest attention matrix, largest ffn matrix) bytes of layer il: op offload copies one matmul's
    weight at a time."""
    attn = ffn = 0
    p = f"blk.{il}."
    for name, _t, _a, _b, nb in tensors:
        if not name.startswith(p):
            continue
        if ".ffn_" in name:
            ffn = max(ffn, nb)
        else:
            attn = max(attn, nb)
    return attn, ffn


# ----------------------------------------------------------------------------- the breakdown


def device_breakdown(
    *,
    geometry: Geometry | Mapping[str, Any],
    tensors: Sequence[Tensor],
    n_gpu_layers: int,
    n_ctx: int,
    type_k: str = "f16",
    type_v: str = "f16",
    flash_attn: bool = True,
    n_ubatch: int = 512,
    n_batch: int = 512,
    backend: Literal["cuda", "metal"] = "cuda",
    n_gpus: int = 1,
    offload_kqv: bool = True,
    n_seq: int = 1,
    use_mmap: bool = True,
    op_offload: bool = True,
    n_outputs_max: int = 0,
    kv_unified: bool = False,
    tensor_split: Sequence[float] | None = None,
    budgets: Mapping[str, int] | None = None,
    era: str = "vendored",
) -> dict[str, dict[str, int]]:
    """Per-device bytes llama.cpp allocates for one context, named as llama.cpp names the devices.

    Returns {device: {model_bytes, kv_bytes, compute_bytes, output_bytes, overhead_bytes, total_bytes,
    budget_bytes, layers, pinned_bytes, pool_bytes}} for every device that holds anything, plus 'CPU' for host
    memory, and under the key '_buffers' the individual buffers as llama.cpp logs them ('CUDA0 model',
    'CPU_Mapped model', 'CUDA_Host compute', ...), for calibration against logs. overhead_bytes is the per-
    process driver overhead outside llama.cpp's buffers (CUDA context + cuBLAS + pool: CUDA_OVERHEAD_BYTES; 0 on
    Metal, whose working set counts only Metal buffers). budget_bytes is filled from `budgets` when given.

    Rules (docs/sources-llamacpp-gpu.md has the citations):
      * layers: gpu_layer_range / layer_devices; the output layer goes first; token_embd stays on CPU.
      * model buffers: a GPU layer's tensors go to the GPU's buffer ('CUDA0', 'MTL0'; Metal with mmap maps
        the file range: 'MTL0_Mapped'). Host tensors: with mmap the CPU buffer maps the file
        ('CPU_Mapped'); without mmap, with a CUDA device, the CUDA host buffer type comes first in the CPU
        buffer list and takes them ('CUDA_Host'); Metal has no host buffer type ('CPU'). The host buffer
        type precedes the CPU extra buffer types, so nothing is repacked when a CUDA device is present.
        Tied embeddings: the output matrix is a duplicate of token_embd, loaded on the output device.
      * KV: each layer's K/V on its layer's device default buffer type; -nkvo keeps all on 'CPU'.
      * compute: host_compute_bytes on the host; gpu_stage_bytes on the GPU running the layers; at partial
        offload with op offload (batches >= 32 tokens) the GPU also runs the CPU layers, copying their
        weights (and their K/V views) into its compute buffer, one matrix at a time; at -ngl 0 the output
        matrix is copied too when the output matmul has >= 32 rows (n_outputs). A CUDA0 compute buffer
        exists even at -ngl 0.
      * output buffer: n_vocab x max(n_outputs, n_seq) x 4, in the host buffer type of the output layer's
        device ('CUDA_Host' when the output layer is on a CUDA GPU, else 'CPU').
    """
    g = as_geometry(geometry)
    if backend not in ("cuda", "metal"):
        raise ValueError(f"backend must be 'cuda' or 'metal', not {backend!r}")
    if not flash_attn and KV_TYPES[type_v.lower()] not in ("F16", "F32", "BF16"):
        raise ValueError("a quantized V cache needs flash attention (llama_context constructor)")
    gpu_names = [f"CUDA{i}" for i in range(n_gpus)] if backend == "cuda" else ["MTL0"]
    devs = layer_devices(g.layers, n_gpu_layers, gpu_names, tensor_split)
    out_dev = devs[g.layers]
    buffers: dict[str, int] = {}

    def put(key: str, nbytes: int) -> None:
        if nbytes:
            buffers[key] = buffers.get(key, 0) + nbytes

    # ---- model buffers
    if backend == "cuda":
        host_model = "CPU_Mapped" if use_mmap else "CUDA_Host"
        gpu_suffix = ""
    else:
        host_model = "CPU_Mapped" if use_mmap else "CPU"
        gpu_suffix = "_Mapped" if use_mmap else ""
    names = {t[0] for t in tensors}
    for name, _ty, _a, _b, nb in tensors:
        il = _tensor_layer(name, g.layers)
        dev = "CPU" if il is None else devs[il]
        put((host_model if dev == "CPU" else dev + gpu_suffix) + " model", nb)
        if name == "token_embd.weight" and "output.weight" not in names:
            # TENSOR_DUPLICATED: the tied output matrix is created again in the output layer's buffer;
            # on the host with mmap both views map the same file range, so it costs nothing more there
            if out_dev != "CPU":
                put(out_dev + gpu_suffix + " model", nb)
            elif not use_mmap:
                put(host_model + " model", nb)

    # ---- KV cache
    cells, streams = padded_ctx(n_ctx, n_seq, kv_unified)
    for il in range(g.layers):
        if not g.has_kv(il):
            continue
        dev = devs[il] if offload_kqv else "CPU"
        put(f"{dev} KV", kv_layer_bytes(g, cells, streams, type_k, type_v))

    # ---- output buffer (llama_context::output_reserve)
    n_b = min(n_batch, pad(n_ctx, 256))  # llama_context: n_batch = min(n_ctx, n_batch) (causal)
    u = min(n_ubatch, n_b)
    n_outputs = min(u, n_outputs_max or n_b)
    host_buft = "CUDA_Host" if backend == "cuda" else "CPU"
    put(("CUDA_Host" if (backend == "cuda" and out_dev != "CPU") else "CPU") + " output", 4 * g.vocab * max(1, n_seq))

    # ---- compute buffers (llama_context::sched_reserve)
    n_kv = cells
    host = host_compute_bytes(g, n_kv=n_kv, n_ubatch=u, n_outputs=n_outputs, flash_attn=flash_attn, era=era)
    gpus_used = [d for d in gpu_names if d in devs]
    cpu_layers = [il for il in range(g.layers) if devs[il] == "CPU"]
    # CUDA op offload (ggml-backend.cpp ggml_backend_sched_backend_id_from_cur): an op whose weight sits
    # in a host buffer of the CPU backend goes to the first backend that supports it and whose offload_op
    # accepts it (CUDA: batch >= 32 for every op but GET_ROWS). The CPU layers' batches then run on CUDA0.
    offloading = backend == "cuda" and op_offload and u >= OP_OFFLOAD_MIN_BATCH
    if not gpus_used and offloading:
        gpus_used = [gpu_names[0]]  # -ngl 0 with a CUDA device visible: op offload still reserves CUDA0
    if backend == "metal" and (cpu_layers or out_dev == "CPU"):
        host = max(
            host,
            cpu_stage_bytes(
                g, n_kv=n_kv, n_ubatch=u, n_outputs=n_outputs, flash_attn=flash_attn, output_on_cpu=out_dev == "CPU"
            ),
        )
    # the output matmul's batch is its n_outputs rows: below 32 ggml-cuda's offload_op leaves it on the CPU
    # when the output layer is there (no output matrix copy; llama-cli and llama-server reserve 1 row a
    # sequence), and the logits are computed in the host buffer (at 1 row they fit in the space the freed
    # inputs leave: 16.01 MiB at -ngl 0 as at full offload, RTX 2060 log)
    logits_on_host = out_dev == "CPU" and not (offloading and n_outputs >= OP_OFFLOAD_MIN_BATCH)
    if logits_on_host and backend == "cuda":
        host = max(host, (g.vocab + g.hidden) * n_outputs * 4)
    # pipeline parallelism (llama_context: more than one device, every layer offloaded, layer split,
    # offload_kqv): ggml_backend_sched_new(..., parallel) keeps GGML_SCHED_MAX_COPIES = 4 copies of every
    # graph input and split input, allocated up front as leafs (ggml-backend.cpp, n_copies > 1). Source-
    # derived: the host inputs x 4 and, per GPU, 3 more copies of its split inputs (the mask, the incoming
    # n_embd x U activations and the index inputs) on top of the stage peak. Not checked against a log.
    pipeline = len(gpu_names) > 1 and len(gpus_used) > 1 and out_dev != "CPU" and not cpu_layers and offload_kqv
    if pipeline:
        host *= 4
    put(f"{host_buft} compute", host)
    kv_view = (
        (row_bytes(KV_TYPES[type_k.lower()], g.n_embd_k_gqa) + row_bytes(KV_TYPES[type_v.lower()], g.n_embd_v_gqa))
        * n_kv
        * streams
    )
    output_matrix_bytes = next(
        (t[4] for t in tensors if t[0] == "output.weight"),
        next((t[4] for t in tensors if t[0] == "token_embd.weight"), 0),
    )
    for dev in gpus_used:
        st = gpu_stage_bytes(
            g, n_kv=n_kv, n_ubatch=u, n_outputs=n_outputs, flash_attn=flash_attn, backend=backend, era=era
        )
        holds_output = out_dev == dev or (out_dev == "CPU" and dev == gpu_names[0] and not logits_on_host)
        if not holds_output:
            st["output"] = 0
        if dev == gpu_names[0] and offloading and cpu_layers:
            # op offload: each CPU-layer matmul's weight is copied into this buffer for its large batches
            # (PR #6083: "the weights are now copied to VRAM in the compute buffer"), as an input of that
            # op's split, freed when the op is done: one matrix at a time next to the stage's activations.
            # Public RTX 2060 logs (Qwen2.5-7B Q4_K_M, b10357): 182.33 MiB at -ngl 0, 15, 18, 19 and 21
            # alike against 134.01 at full offload; the largest CPU-layer matrix (a Q6_K ffn_down, 53.12
            # MiB) on top gives 187.12, +2.6 %.
            attn_largest, ffn_largest = zip(*(_largest_layer_matrices(tensors, il) for il in cpu_layers), strict=True)
            st["attention"] += max(attn_largest)
            st["mlp"] += max(ffn_largest)
            if not offload_kqv or any(g.has_kv(il) for il in cpu_layers):
                st["attention"] += kv_view  # the CPU layer's K/V views, copied up for the attention op
            if out_dev == "CPU" and holds_output:
                st["output"] += output_matrix_bytes
        elif not offload_kqv:
            st["attention"] += kv_view  # -nkvo: each layer's K/V views are copied up for the attention op
        peak = max(st.values())
        if pipeline:
            mask_dev = n_kv * u * (2 if flash_attn else 4)
            peak += 3 * (mask_dev + g.hidden * u * 4 + u * (4 + 8 + 8))
        put(f"{dev} compute", peak)

    # ---- per device
    result: dict[str, dict[str, int]] = {}
    layers_on = {d: sum(1 for x in devs if x == d) for d in set(devs)}
    for key, nb in buffers.items():
        buf, kind = key.rsplit(" ", 1)
        dev = "CPU" if buf in ("CPU", "CPU_Mapped", "CUDA_Host", "CPU_REPACK") else buf.replace("_Mapped", "")
        d = result.setdefault(
            dev,
            {
                "model_bytes": 0,
                "kv_bytes": 0,
                "compute_bytes": 0,
                "output_bytes": 0,
                "overhead_bytes": 0,
                "total_bytes": 0,
                "budget_bytes": 0,
                "layers": 0,
                "pinned_bytes": 0,
                "pool_bytes": 0,
            },
        )
        field = {"model": "model_bytes", "KV": "kv_bytes", "compute": "compute_bytes", "output": "output_bytes"}[kind]
        d[field] += nb
        if buf == "CUDA_Host":
            d["pinned_bytes"] += nb
    for dev, d in result.items():
        d["layers"] = layers_on.get(dev, 0)
        if dev.startswith("CUDA"):
            # without flash attention kqv = mul_mat(v, kq) goes through batched cuBLAS, which converts the
            # f32 KQ scores to f16 in the ggml CUDA pool (ggml-cuda.cu ggml_cuda_mul_mat_batched_cublas_impl:
            # src1_alloc(ctx.pool())): n_kv x U x H x 2 bytes outside every logged buffer, kept by the pool
            d["pool_bytes"] = 0 if flash_attn else n_kv * u * g.attention_heads * 2 * streams
            d["overhead_bytes"] = CUDA_OVERHEAD_BYTES + d["pool_bytes"]
        d["total_bytes"] = (
            d["model_bytes"] + d["kv_bytes"] + d["compute_bytes"] + d["output_bytes"] + d["overhead_bytes"]
        )
        if budgets and dev in budgets:
            d["budget_bytes"] = int(budgets[dev])
    result["_buffers"] = dict(buffers)
    return result


def fits(breakdown: Mapping[str, Mapping[str, int]]) -> bool:
    """Every device with a budget holds its total (devices without a budget are not judged)."""
    return all(
        d["total_bytes"] <= d["budget_bytes"] for k, d in breakdown.items() if k != "_buffers" and d.get("budget_bytes")
    )


# ----------------------------------------------------------------------------- budgets

# Memory a CUDA process holds on the GPU outside llama.cpp's buffers: the CUDA context (kernels of
# libggml-cuda loaded lazily, ~250-400 MiB on CUDA 12), the cuBLAS handle/workspace, and the ggml CUDA
# pool (temporary f16 conversions, MMQ scratch), which grows during the first batches. Not printed at
# start-up; the exit table (common_memory_breakdown_print) shows it inside 'unaccounted' together with
# other processes. Public figures: see NOTES.md ('CUDA context'). A planning constant, not a measurement
# of this build.
CUDA_OVERHEAD_BYTES = 512 * MiB


def cuda_budget_bytes(free_bytes: int) -> int:
    """What llama.cpp can allocate on a CUDA GPU: its free memory (cudaMemGetInfo) -- not the total -- less
    what other processes hold; our own CUDA_OVERHEAD_BYTES is charged in total_bytes, not here."""
    return max(0, int(free_bytes))


def plan_devices(*, budgets: Mapping[str, int], **kw: Any) -> dict[str, Any]:
    """device_breakdown plus the 'k/n' label and the verdict, in the shape the planner's memory.devices
    takes: {'devices': {name: {...}}, 'gpu_layers': 'k/n', 'fits': bool}."""
    b = device_breakdown(budgets=budgets, **kw)
    g = as_geometry(kw["geometry"])
    devices = {k: v for k, v in b.items() if k != "_buffers"}
    return {
        "devices": devices,
        "buffers": b["_buffers"],
        "gpu_layers": gpu_layers_label(g.layers, kw["n_gpu_layers"]),
        "fits": fits(b),
    }


def max_gpu_layers(*, budgets: Mapping[str, int], **kw: Any) -> int:
    """Largest -ngl (0 .. n_layer + 1) whose breakdown fits every budget, or -1 when even -ngl 0 does
    not (device totals grow monotonically with ngl on the GPU side)."""
    g = as_geometry(kw["geometry"])
    best = -1
    for ngl in range(g.layers + 2):
        if fits(device_breakdown(budgets=budgets, n_gpu_layers=ngl, **kw)):
            best = ngl
    return best
