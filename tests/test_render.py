"""`render`: golden files for a GPU and a CPU plan, every file through its real validator (systemd-analyze
verify, check-jsonschema's compose spec, kubernetes-validate --strict, the production-stack chart's own
values schema), hostile values in every field, and the unit's ExecStart = `up --dry-run`'s argv."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qwen_deploy.errors import UsageError
from qwen_deploy.hardware.catalog import simulate
from qwen_deploy.model.profiles import load_profile
from qwen_deploy.planner import Request, plan
from qwen_deploy.render import RenderOptions, render, systemd_arg, yaml_scalar
from tests.conftest import make_hardware
from tests.test_cli import run

QWEN = load_profile("qwen3-4b-instruct-2507")
GOLDEN = Path(__file__).parent / "golden"
HELM_SCHEMA = Path(__file__).parent / "data" / "production-stack-values.schema.json"
BIN = Path(sys.executable).parent


def _vllm_bin_dir() -> Path:
    """A folder holding a real `vllm` script (the vLLM parser environment), for the GPU unit's ExecStart."""
    from tests.test_vllm_parser import _require_vllm_python

    return _require_vllm_python().parent


def gpu_plan():
    return plan(QWEN, simulate(make_hardware(ram_gib=64), gpus=("RTX 4090",)), Request())


def cpu_plan():
    return plan(QWEN, make_hardware(ram_gib=32, cores=8), Request())


def _files(p, tmp_path: Path, python: str, **options) -> dict[str, str]:
    model = tmp_path / "Qwen3-4B-Instruct-2507-Q4_K_M.gguf"
    model.write_bytes(b"GGUF")
    defaults = {"name": "qwen3", "python": python}
    if p.choice.engine == "llamacpp":
        defaults["model_path"] = str(model)
    files, _ = render(p, "all", RenderOptions(**{**defaults, **options}))
    return files


def _normalize(text: str, tmp_path: Path, python: str) -> str:
    return text.replace(str(tmp_path), "<TMP>").replace(str(Path(python).parent), "<BIN>")


@pytest.mark.parametrize("which", ["gpu", "cpu"])
def test_golden_files(which, tmp_path):
    """The files for an RTX 4090 plan and a 32 GiB / 8-core CPU plan, as committed in tests/golden/.
    UPDATE_GOLDEN=1 rewrites them (review the diff)."""
    p = gpu_plan() if which == "gpu" else cpu_plan()
    python = str(BIN / "python3")
    files = _files(p, tmp_path, python)
    expected_names = {"qwen3.service", "compose.yaml", "k8s.yaml"} | ({"helm-values.yaml"} if which == "gpu" else set())
    assert set(files) == expected_names
    for name, text in files.items():
        golden = GOLDEN / which / name
        text = _normalize(text, tmp_path, python)
        if os.environ.get("UPDATE_GOLDEN"):
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_text(text)
        assert text == golden.read_text(), f"{golden} differs (UPDATE_GOLDEN=1 to accept)"


def _verify_unit(path: Path, user: bool, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "run"))
    (tmp_path / "run").mkdir(exist_ok=True)
    args = ["systemd-analyze", "verify", *(["--user"] if user else []), str(path)]
    return subprocess.run(args, capture_output=True, text=True, env=env)


def _validate_all(files: dict[str, str], folder: Path, tmp_path: Path, user: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    for name in files:
        path = folder / name
        if name.endswith(".service"):
            result = _verify_unit(path, user, tmp_path)
            assert result.returncode == 0 and not result.stderr.strip(), result.stderr
        elif name == "compose.yaml":
            cmd = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            assert result.returncode == 0, result.stdout + result.stderr
        elif name == "k8s.yaml":
            cmd = [str(BIN / "kubernetes-validate"), "--strict", str(path)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            assert result.returncode == 0 and "passed" in result.stdout, result.stdout + result.stderr
            kinds = [doc["kind"] for doc in yaml.safe_load_all(path.read_text())]
            assert kinds == ["PersistentVolumeClaim", "Deployment", "Service"]
        elif name == "helm-values.yaml":
            cmd = [str(BIN / "check-jsonschema"), "--schemafile", str(HELM_SCHEMA), str(path)]
            result = subprocess.run(cmd, capture_output=True, text=True)
            assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.engine  # systemd-analyze (Debian's systemd)
@pytest.mark.parametrize("user", [False, True])
def test_gpu_plan_files_pass_the_validators(tmp_path, user):
    p = gpu_plan()
    files = _files(p, tmp_path, str(_vllm_bin_dir() / "python"), user_unit=user)
    _validate_all(files, tmp_path / "out", tmp_path, user=user)
    unit = files["qwen3.service"]
    assert "DeviceAllow=char-nvidia* rw" in unit and "PrivateDevices=no" in unit
    assert "MemoryMax" not in unit
    k8s = list(yaml.safe_load_all(files["k8s.yaml"]))
    container = k8s[1]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["args"][container["args"].index("--max-model-len") + 1] == str(p.choice.context)
    helm = yaml.safe_load(files["helm-values.yaml"])["servingEngineSpec"]["modelSpec"][0]
    assert (helm["requestGPU"], helm["vllmConfig"]["maxModelLen"]) == (1, p.choice.context)


@pytest.mark.engine  # systemd-analyze (Debian's systemd)
@pytest.mark.parametrize("user", [False, True])
def test_cpu_plan_files_pass_the_validators(tmp_path, user):
    files = _files(cpu_plan(), tmp_path, sys.executable, user_unit=user)
    _validate_all(files, tmp_path / "out", tmp_path, user=user)
    unit = files["qwen3.service"]
    c = cpu_plan().choice
    # MemoryMax: the plan's total × 1.25, in MiB, rounded up
    assert f"MemoryMax={math.ceil(c.memory.total_bytes * 1.25 / 1024**2)}M\n" in unit
    k8s = list(yaml.safe_load_all(files["k8s.yaml"]))[1]["spec"]["template"]["spec"]["containers"][0]
    # the container runs llama.cpp's own server (the same build): it asks for llama-server's memory for the plan
    from qwen_deploy.engines.llama_server.plan import from_llamacpp

    served = from_llamacpp(c, QWEN).memory.total_bytes
    assert served < c.memory.total_bytes  # a C++ process and one logits row: less than llama-cpp-python's
    assert k8s["resources"]["requests"]["memory"] == f"{math.ceil(served / 1024**2)}Mi"
    assert "PrivateDevices=yes" in unit and "DeviceAllow" not in unit
    compose = yaml.safe_load(files["compose.yaml"])
    service = compose["services"]["qwen3"]
    assert service["ports"] == ["127.0.0.1:8000:8080"]
    assert "--ctx-size" in service["command"] and "--parallel" in service["command"]
    assert service["env_file"] == [{"path": "qwen3.env", "required": False}]


def test_restricted_pod_security(tmp_path):
    for p in (gpu_plan(), cpu_plan()):
        deployment = list(yaml.safe_load_all(_files(p, tmp_path, sys.executable)["k8s.yaml"]))[1]
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
            assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)
            key = next(e for e in container["env"] if "valueFrom" in e)
            assert key["valueFrom"]["secretKeyRef"]["name"] == "qwen3-api-key"
        assert all("hostPath" not in v for v in pod["volumes"])


# ----------------------------------------------------------------------------- the unit runs up's argv


def _exec_start(unit: str) -> list[str]:
    """ExecStart= as systemd splits it: our quoting is shell-like double quotes with \\ escapes, and %%/$$."""
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return [arg.replace("%%", "%").replace("$$", "$") for arg in shlex.split(line[len("ExecStart=") :])]


def test_systemd_exec_start_is_up_dry_run_argv(small_gguf, tmp_path):
    code, unit, err = run("render", "systemd", "--model-file", str(small_gguf), "--port", "8123")
    assert code == 0, err
    code, dry, err = run("up", "--model-file", str(small_gguf), "--port", "8123", "--dry-run", "--json")
    assert code == 0, err
    assert _exec_start(unit) == json.loads(dry)["command"]


@pytest.mark.engine
def test_systemd_exec_start_starts_a_real_server(small_gguf, tmp_path):
    from tests.engine_harness import free_port, running_server

    port = free_port()
    code, unit, err = run("render", "systemd", "--model-file", str(small_gguf), "--port", str(port))
    assert code == 0, err
    with running_server(_exec_start(unit), port, tmp_path / "unit.log") as server:
        assert server.chat("Hi", max_tokens=2)["choices"]


# ----------------------------------------------------------------------------- hostile values


HOSTILE = ['a"b', "a'b", "a b", "$HOME", "${X}", "100%", "%n", "a;b", ";", "a\\b", "#x", "a: b", "{x}", "- x", "*x"]


@pytest.mark.parametrize("value", HOSTILE)
def test_systemd_arg_round_trips(value):
    """systemd-style splitting of the quoted argument gives back exactly the value."""
    quoted = systemd_arg(value)
    assert [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(quoted)] == [value]
    assert "$" not in quoted.replace("$$", "") and "%" not in quoted.replace("%%", "")


@pytest.mark.parametrize("value", HOSTILE + ["yes", "null", "1e3", "0x10", "~"])
def test_yaml_scalar_round_trips(value):
    assert yaml.safe_load(f"key: {yaml_scalar(value)}") == {"key": value}


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\x00b", "a\tb", "a\x1bb"])
def test_control_characters_are_refused(value):
    with pytest.raises(UsageError, match="line break or control character"):
        systemd_arg(value)
    with pytest.raises(UsageError):
        yaml_scalar(value)


@pytest.mark.engine  # systemd-analyze (Debian's systemd)
def test_hostile_model_path_and_alias_in_every_file(tmp_path):
    """A model file whose path has a space, quotes, $, %, ; and # and an alias full of YAML specials:
    every file still validates and says exactly those values."""
    folder = tmp_path / 'we $ird %d; "dir" #1'
    folder.mkdir()
    model = folder / "m 'x'.gguf"
    model.write_bytes(b"GGUF")
    p = cpu_plan()
    alias = 'a: "b" #c {d} $e %f'
    from dataclasses import replace

    p = replace(p, choice=replace(p.choice, served_name=alias))
    files, _ = render(p, "all", RenderOptions(name="hostile", python=sys.executable, model_path=str(model)))
    _validate_all(files, tmp_path / "out", tmp_path)
    argv = _exec_start(files["hostile.service"])
    assert argv[argv.index("--model") + 1] == str(model.resolve())
    assert argv[argv.index("--model_alias") + 1] == alias
    compose = yaml.safe_load(files["compose.yaml"])["services"]["hostile"]
    assert compose["command"][compose["command"].index("--alias") + 1] == alias
    assert {"type": "bind", "source": str(folder.resolve()), "target": "/model", "read_only": True} in compose[
        "volumes"
    ]
    assert compose["command"][compose["command"].index("--model") + 1] == f"/model/{model.name}"
    k8s = list(yaml.safe_load_all(files["k8s.yaml"]))[1]["spec"]["template"]["spec"]["containers"][0]
    assert k8s["args"][k8s["args"].index("--alias") + 1] == alias


def test_newline_in_a_plan_value_is_refused(tmp_path):
    p = cpu_plan()
    from dataclasses import replace

    bad = replace(p, choice=replace(p.choice, served_name="x\nExecStartPre=/bin/sh"))
    with pytest.raises(UsageError, match="engine_args.model_alias"):
        render(bad, "systemd", RenderOptions(name="x", python=sys.executable, model_path=sys.executable))


@pytest.mark.parametrize("name", ["a\nb", 'a"b', "a b", "A", "../x", "$x", "x%n"])
def test_hostile_names_are_refused(name):
    code, _, err = run("render", "compose", "--gpu", "RTX 4090", "--ram", "64GiB", "--name", name)
    assert code == 2 and ("is not a valid server name" in err or "contains a line break" in err)


@pytest.mark.parametrize(
    "host",
    ["a\nb", "x;y", "0.0.0.0 --api-key x", "$(id)", "[", "]", "a:b", "..", "-x", "x-", "1.2.3", "999.1.1.1",
     # an address wrapped in anything (a review found the bracket check stripped any first and last character)
     ";0.0.0.0;", '"0.0.0.0"', "#::1", "{::}", "[::1", "fe80::1%", 'fe80::1%x" y', "127.0.0.1%eth0"],
)  # fmt: skip
def test_hostile_hosts_are_refused(host):
    code, _, err = run("render", "compose", "--gpu", "RTX 4090", "--ram", "64GiB", "--host", host)
    assert code == 2 and ("is not an IP address" in err or "contains a line break" in err), err


def test_bracketed_ipv6_is_refused_with_the_form_to_use():
    code, _, err = run("render", "compose", "--gpu", "RTX 4090", "--ram", "64GiB", "--host", "[::1]")
    assert code == 2 and "without brackets" in err


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "::1", "::", "0.0.0.0", "localhost", "gpu-box.lan", "gpu-box.lan.", "fe80::1", "fe80::1%eth0"]
)
def test_addresses_and_host_names_are_taken(host):
    code, out, err = run(
        "render", "compose", "--gpu", "RTX 4090", "--ram", "64GiB", "--host", host, "--insecure-no-api-key"
    )
    assert code == 0, err


def test_hostile_repo_in_a_plan_file_is_refused(tmp_path):
    plan_file = tmp_path / "plan.json"
    assert run("plan", "--gpu", "RTX 4090", "--ram", "64GiB", "-o", str(plan_file))[0] == 0
    data = json.loads(plan_file.read_text())
    data["choice"]["engine_args"]["served-model-name"] = "x\n  privileged: true"
    plan_file.write_text(json.dumps(data))
    code, _, err = run("render", "k8s", str(plan_file))
    assert code == 2 and "contains a line break" in err


# ----------------------------------------------------------------------------- the command


def test_render_all_writes_files_atomically(tmp_path, small_gguf):
    out = tmp_path / "deploy"
    code, stdout, err = run("render", "all", "--model-file", str(small_gguf), "-o", str(out), "--name", "tiny")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["compose.yaml", "k8s.yaml", "tiny.service"]
    assert "helm-values skipped" in err and f"wrote {out / 'tiny.service'}" in err
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_render_prints_without_output_dir(small_gguf):
    code, stdout, err = run("render", "all", "--model-file", str(small_gguf))
    assert code == 0, err
    assert "# ===== tiny-qwen3.service =====" in stdout and "# ===== k8s.yaml =====" in stdout


def test_helm_values_need_a_gpu_plan(small_gguf):
    code, _, err = run("render", "helm-values", "--model-file", str(small_gguf))
    assert code == 2 and "production-stack chart serves vLLM" in err


def test_systemd_for_a_model_not_downloaded_says_how(tmp_path):
    code, _, err = run("render", "systemd", "--ram", "32GiB", "--no-gpu", "--precision", "q4_k_m")
    assert code == 2
    assert "hf download unsloth/Qwen3-4B-Instruct-2507-GGUF Qwen3-4B-Instruct-2507-Q4_K_M.gguf" in err


def test_replicas_for_kubernetes_and_helm(tmp_path):
    code, out, err = run("render", "k8s", "--gpu", "2xL4", "--ram", "64GiB", "--replicas", "3")
    assert code == 0, err
    deployment = list(yaml.safe_load_all(out))[1]
    assert deployment["spec"]["replicas"] == 3
    assert "--data-parallel-size" not in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "ReadWriteMany" in out and "ReadWriteMany" in err


def test_validators_are_installed():
    assert shutil.which("systemd-analyze"), "systemd-analyze (Debian package systemd) is needed"
    assert (BIN / "check-jsonschema").exists() and (BIN / "kubernetes-validate").exists()


def test_render_all_for_a_model_not_here_writes_the_container_files(tmp_path):
    """Compose and Kubernetes download the GGUF themselves; only the unit needs it here, and says so."""
    out = tmp_path / "deploy"
    code, _, err = run("render", "all", "--ram", "32GiB", "--no-gpu", "-o", str(out))
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["compose.yaml", "k8s.yaml"]
    assert "systemd unit skipped" in err and "hf download" in err


@pytest.mark.engine  # systemd-analyze (Debian's systemd)
@pytest.mark.parametrize("which", ["gpu", "cpu"])
def test_chat_page_service_beside_the_server(tmp_path, which):
    """render --ui: a unit for `qwen-deploy ui` ordered after the server's, and a compose service built from
    this checkout that waits for the server's health check; both through their validators."""
    p = gpu_plan() if which == "gpu" else cpu_plan()
    python = str(_vllm_bin_dir() / "python") if which == "gpu" else sys.executable
    from qwen_deploy.render import source_checkout

    files = _files(p, tmp_path, python, ui=True, ui_port=8600, source_dir=source_checkout())
    assert "qwen3-ui.service" in files
    _validate_all(files, tmp_path / "out", tmp_path)
    unit = files["qwen3-ui.service"]
    assert "After=qwen3.service" in unit and "Wants=qwen3.service" in unit
    argv = _exec_start(unit)
    assert argv[1:4] == ["-m", "qwen_deploy", "ui"] and argv[argv.index("--port") + 1] == "8600"
    assert argv[argv.index("--url") + 1] == "http://127.0.0.1:8000"
    compose = yaml.safe_load(files["compose.yaml"])["services"]
    page = compose["qwen3-ui"]
    assert page["depends_on"] == {"qwen3": {"condition": "service_healthy"}}
    assert page["ports"] == ["127.0.0.1:8600:8600"] and page["build"]["context"] == source_checkout()
    container_port = "8000" if which == "gpu" else "8080"
    assert page["command"][page["command"].index("--url") + 1] == f"http://qwen3:{container_port}"


def test_names_that_are_not_dns_labels_are_converted_for_containers(tmp_path):
    """A valid server name may hold '.' (a profile name does): Services and compose projects may not."""
    from qwen_deploy.render import dns_label

    assert dns_label("mistral-7b-instruct-v0.3") == "mistral-7b-instruct-v0-3"
    assert dns_label("3b_model") == "m-3b-model"
    code, out, err = run("render", "k8s", "--model", "mistral-7b-instruct-v0.3", "--gpu", "RTX 4090", "--ram", "64GiB")
    assert code == 0, err
    service = list(yaml.safe_load_all(out))[2]
    assert service["metadata"]["name"] == "mistral-7b-instruct-v0-3" and "services are named" in err


def test_helm_values_for_replicas_and_start_up(tmp_path):
    code, out, err = run("render", "helm-values", "--gpu", "2xL4", "--ram", "64GiB")
    assert code == 0, err
    values = yaml.safe_load(out)["servingEngineSpec"]
    spec = values["modelSpec"][0]
    assert spec["replicaCount"] == 2 and spec["pvcAccessMode"] == ["ReadWriteMany"] and "ReadWriteMany" in err
    assert "vllmApiKey" not in values  # the chart would require the secret; the comment says how to add it
    assert values["startupProbe"]["failureThreshold"] * 10 >= 600  # a first download plus 3 x the load time
    path = tmp_path / "values.yaml"
    path.write_text(out)
    check = subprocess.run(
        [str(BIN / "check-jsonschema"), "--schemafile", str(HELM_SCHEMA), str(path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout
