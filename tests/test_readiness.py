"""The readiness check and the engine's log as `up` reads it: diagnoses and start-up stages from real log
lines, the log read as it grows (cut lines, cut UTF-8 characters), and a server that answers errors."""

from __future__ import annotations

import pytest

from qwen_deploy import engines
from qwen_deploy.errors import EngineFailed
from qwen_deploy.readiness import LogReader, Progress, diagnose, stage_of, wait_url

LLAMA_OOM = """ggml_aligned_malloc: insufficient memory (attempted to allocate 4608.00 MB)
ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 4831838208
llama_init_from_model: failed to initialize the context: failed to allocate buffer for kv cache
ValueError: Failed to create llama_context"""
VLLM_OOM = (
    "ValueError: To serve at least one request with the models's max seq len (262144), (36.00 GiB KV cache is "
    "needed, which is larger than the available KV cache memory (12.95 GiB)."
)
PORT_IN_USE = (
    "ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', 8000): address already in use"
)


@pytest.mark.parametrize(
    "engine,text,kind",
    [
        ("llamacpp", LLAMA_OOM, "oom"),
        ("llamacpp", PORT_IN_USE, "port"),
        ("llamacpp", "ValueError: Model path does not exist: /x.gguf", "missing_file"),
        ("llamacpp", "gguf_init_from_file_impl: invalid magic characters: 'xxxx'", "corrupt"),
        ("vllm", VLLM_OOM, "oom"),
        ("vllm", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "oom"),
        (
            "vllm",
            "RuntimeError: CUDA error: no kernel image is available for execution on the device",
            "gpu_unsupported",
        ),
        ("vllm", PORT_IN_USE, "port"),
        ("llamacpp", "INFO:     Uvicorn running on http://127.0.0.1:8000", None),
    ],
)
def test_diagnose(engine, text, kind):
    assert diagnose(engines.get(engine), text) == kind


def test_stages_follow_the_log():
    text = "llama_model_loader: loaded meta data with 30 key-value pairs\nload_tensors: CPU model buffer size = 1 MiB\n"
    assert stage_of(engines.get("llamacpp"), text) == "loading weights"
    assert stage_of(engines.get("llamacpp"), text + "llama_kv_cache: size = 1 MiB") == "allocating the KV cache"
    assert stage_of(engines.get("vllm"), "Model loading took 7.6 GiB and 3.1 s") == "profiling memory"


def test_log_reader_reads_only_new_bytes_and_follows_stages_across_cut_lines(tmp_path):
    """The engine writes in pieces: a line (and a UTF-8 character) can be cut between two polls."""
    log = tmp_path / "engine.log"
    log.write_bytes(b"=== header line of an earlier attempt\n")
    reader = LogReader(log, log.stat().st_size)
    assert reader.poll_stage(engines.get("llamacpp")) is None
    data = (
        "llama_model_loader: loaded meta data with 30 key-value pairs\n"
        "load_tensors: CPU model buffer size = 1 MiB (caf\u00e9 \u2014 done)\n"
        "llama_kv_cache: size = 1 MiB\n"
    ).encode()
    dash = data.index("\u2014".encode())
    cuts = [data.index(b"sors:"), dash + 2, data.index(b"_cache"), len(data)]  # mid-word, mid-character
    pieces = [data[a:b] for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
    seen = []
    for piece in pieces:
        with open(log, "ab") as handle:
            handle.write(piece)
        seen.append(reader.poll_stage(engines.get("llamacpp")))
    assert seen == ["reading the GGUF header", "loading weights", "loading weights", "allocating the KV cache"]
    assert reader.text == data.decode()  # nothing read twice, nothing lost, no U+FFFD
    assert "earlier attempt" not in reader.text
    assert reader.poll() == ""
    with open(log, "ab") as handle:  # the engine dies in the middle of a character
        handle.write(b"fatal: out of memory \xe2\x80")
    assert reader.poll() == "fatal: out of memory "
    assert reader.tail(1) == "fatal: out of memory \ufffd"  # the report shows what there is


def test_a_stage_once_reached_is_kept():
    assert stage_of(engines.get("llamacpp"), "INFO: loading", after="loading weights") == "loading weights"
    assert stage_of(engines.get("llamacpp"), "compute buffer size = 1", after="loading weights") == (
        "reserving compute buffers"
    )


def test_a_server_that_answers_errors_is_not_flooded(tmp_path):
    """Port-closed rounds are 25 ms apart; once the port accepts and the HTTP check fails, 100 ms apart (an
    upper bound on the requests: a slow machine only makes fewer)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from qwen_deploy.client import free_port

    hits = []

    class Unavailable(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            hits.append(self.path)
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(EngineFailed, match="did not serve within"):
            wait_url(f"http://127.0.0.1:{port}", None, None, 1.0, Progress(quiet=True))
    finally:
        server.shutdown()
        server.server_close()
    assert 1 <= len(hits) <= 12, len(hits)  # 1 s at 100 ms: ~10 (at 25 ms it would be ~35)
