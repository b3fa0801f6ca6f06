"""State records: what `up` writes, what `status`/`down` trust. A record is input like any file: bad ones are
reported one sentence each and left alone, and nothing is signalled or deleted on a record's word alone
(decoy processes with their real pids and start times in records survive status, down and down --all)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from qwen_deploy import procs, state
from qwen_deploy.errors import UsageError
from tests.test_cli import run

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _record(name: str, pid: int, ticks: int, token: str = "0" * 32, port: int = 8000) -> state.Record:
    return state.Record(
        name=name, pid=pid, start_ticks=ticks, token=token, engine="llamacpp", host="127.0.0.1", port=port,
        served_name="m", model="m", context=4096, command=["x"], started_at=0.0, mode="detached",
    )  # fmt: skip


def _ours(token: str, code: str = "import time; time.sleep(60)") -> subprocess.Popen:
    """A process started the way `up` starts an engine: its own session, the instance token in its env."""
    env = {**os.environ, procs.INSTANCE_ENV: token}
    return subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)


def _decoy(session: bool = True) -> subprocess.Popen:
    """Somebody else's process (the tests' own, but not carrying any instance token)."""
    return subprocess.Popen(SLEEP, start_new_session=session)


def _wait_ticks(pid: int) -> int:
    for _ in range(100):
        ticks = procs.process_start_ticks(pid)
        if ticks is not None:
            return ticks
        time.sleep(0.01)
    raise AssertionError("no start time")


def test_state_dir_override_and_xdg(monkeypatch, tmp_path):
    assert state.state_dir() == tmp_path / "state"  # conftest sets QWEN_DEPLOY_STATE_DIR
    monkeypatch.delenv("QWEN_DEPLOY_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state.state_dir() == tmp_path / "xdg" / "qwen-deploy"


def test_record_of_an_exited_engine_is_stale():
    token = procs.new_token()
    child = _ours(token)
    try:
        time.sleep(0.2)  # the environment is the child's own once it has exec'd
        state.write(_record("a", child.pid, _wait_ticks(child.pid), token))
        assert state.read("a").alive()
    finally:
        child.kill()
        child.wait()
    assert not state.read("a").alive()
    assert [r.name for r in state.reap_stale()] == ["a"]
    assert state.records() == []


def test_reused_pid_is_not_ours():
    """A live PID whose start time differs from the record's belongs to another process: never signalled."""
    decoy = _decoy()
    try:
        ticks = _wait_ticks(decoy.pid)
        assert not _record("b", decoy.pid, ticks + 1).alive()
        assert not _record("b", decoy.pid, ticks).alive()  # right start time, but no instance token
    finally:
        decoy.kill()
        decoy.wait()


def test_state_folder_and_files_are_private(tmp_path):
    state.write(_record("c", 2, 1))
    root = tmp_path / "state"
    assert (root.stat().st_mode & 0o777, (root / "servers").stat().st_mode & 0o777) == (0o700, 0o700)
    assert (root / "servers" / "c.json").stat().st_mode & 0o777 == 0o600
    os.close(state.open_log("c"))
    assert (root / "logs" / "c.log").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["Bad", "a b", "-x", "x/y", "a" * 64, "x\ny", "", "../x", "."])
def test_bad_names_are_refused(name):
    with pytest.raises(UsageError):
        state.check_name(name)


def test_default_name_from_served_name():
    assert state.default_name("Qwen3-4B-Instruct-2507") == "qwen3-4b-instruct-2507"
    assert state.default_name("a b/c") == "a-b-c"


def test_dead_leader_with_live_group_members_is_stopped_not_forgotten():
    """vLLM's API server can die while its engine core lives on: the members carrying the token are stopped,
    then the record goes."""
    token = procs.new_token()
    leader = _ours(token, "import os, time\nif os.fork() == 0:\n    time.sleep(300)\nelse:\n    time.sleep(300)\n")
    time.sleep(0.5)
    state.write(_record("split", leader.pid, _wait_ticks(leader.pid), token))
    members = [
        int(p) for p in subprocess.run(["pgrep", "-g", str(leader.pid)], capture_output=True, text=True).stdout.split()
    ]
    assert len(members) == 2
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait()
    assert state.read("split").orphans_alive()
    assert [r.name for r in state.reap_stale()] == ["split"]
    assert not procs.group_alive(leader.pid)


# ----------------------------------------------------------------------------- hostile and broken records


def _write_raw(tmp_path, name: str, data) -> None:
    folder = tmp_path / "state" / "servers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(data if isinstance(data, str) else json.dumps(data))


def _good(file_name: str, **changes) -> dict:
    return {**_record(file_name, 12345, 1).to_dict(), **changes}


@pytest.mark.parametrize(
    "data,why",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "is not a JSON object"),
        (_good("x", pid=1), "pid 1 is not one qwen-deploy could have started"),
        (_good("x", pid=0), "pid 0 is not one"),
        (_good("x", pid=-5), "pid -5 is not one"),
        (_good("x", pid="12"), "'pid' is not a int"),
        (_good("x", pid=True), "'pid' is not a int"),
        (_good("x", port=70000), "port 70000 is outside"),
        (_good("x", name="../../../somefile"), "is not the file's name"),
        (_good("x", name="y"), "is not the file's name"),
        (_good("x", token="short"), "token is malformed"),
        (_good("x", started_at=float("nan")), "not a finite time"),
        (_good("x", schema="qwen-deploy/state/v1"), "an older qwen-deploy"),
        (_good("x", command="rm -rf /"), "'command' is not a list"),
        (_good("x", api_key_file="relative/key"), "not an absolute path"),
        (_good("x", host="a\nb"), "control characters"),
    ],
)
def test_a_bad_record_is_one_sentence_and_left_alone(tmp_path, data, why):
    _write_raw(tmp_path, "x", data)
    state.write(_record("good", 12345, 1))
    records, bad = state.scan()
    assert [r.name for r in records] == ["good"]
    assert len(bad) == 1 and why in bad[0] and "x.json" in bad[0]
    assert (tmp_path / "state" / "servers" / "x.json").exists()  # not removed: qwen-deploy may not have written it
    code, out, err = run("status")
    assert code == 0 and why in err and "Traceback" not in err and "bug" not in err


def test_a_record_named_to_escape_the_state_folder_deletes_nothing_outside(tmp_path):
    """The reproducer of the issue: name '../../../somefile' made `status` delete somefile.json elsewhere."""
    victim = tmp_path / "somefile.json"
    victim.write_text("precious")
    _write_raw(tmp_path, "stale", _good("stale", name="../../../somefile", pid=4_000_000))
    assert run("status")[0] == 0
    assert run("down", "--all")[0] == 0
    assert victim.read_text() == "precious"


def test_a_corrupt_state_folder_is_reported_not_fatal(tmp_path):
    root = tmp_path / "state"
    (root / "servers" / "folder.json").mkdir(parents=True)  # a folder where a file belongs
    (root / "servers" / "fifo.json").parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(root / "servers" / "fifo.json")  # a FIFO: opening it would hang
    (root / "servers" / "BAD NAME.json").write_text("{}")
    state.write(_record("good", 12345, 1))
    records, bad = state.scan()
    assert [r.name for r in records] == ["good"] and len(bad) == 3
    code, _, err = run("status")
    assert code == 0 and err.count("warning:") == 3 and "Traceback" not in err


def test_a_file_where_the_servers_folder_belongs(tmp_path):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "servers").write_text("not a folder")
    code, _, err = run("status")
    assert code == 0 and "is not a folder" in err
    code, _, err = run("up", "--model", "qwen3-4b", "--dry-run")  # planning still works
    assert code == 0, err


def test_decoys_survive_status_down_and_down_all(tmp_path):
    """Somebody else's processes, group leaders of their own sessions, written into records with their real
    pids and start times (and a reused pid, pid 1, our own group): none is signalled by status, down or down
    --all, and nothing outside the state folder is touched."""
    decoys = [_decoy(), _decoy(), _decoy(session=False)]
    try:
        time.sleep(0.2)
        for i, d in enumerate(decoys):
            state.write(_record(f"decoy{i}", d.pid, _wait_ticks(d.pid), procs.new_token(), port=9000 + i))
        state.write(_record("reused", decoys[0].pid, _wait_ticks(decoys[0].pid) + 7, port=9100))
        _write_raw(tmp_path, "init", _good("init", pid=1))
        _write_raw(tmp_path, "mine", _good("mine", pid=os.getpgrp()))
        outside = sorted(p.name for p in tmp_path.iterdir() if p.name != "state")
        for args in (["status"], ["status", "--json"], ["down", "decoy0"], ["down", "--all"], ["down"]):
            code, _, err = run(*args)
            assert "Traceback" not in err and "bug" not in err, (args, err)
            for d in decoys:
                assert d.poll() is None, f"{args} signalled decoy {d.pid}"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name != "state") == outside
    finally:
        for d in decoys:
            d.kill()
            d.wait()


def test_down_stops_what_is_provably_ours():
    token = procs.new_token()
    child = _ours(token)
    time.sleep(0.2)
    state.write(_record("mine", child.pid, _wait_ticks(child.pid), token))
    code, out, _ = run("down", "mine")
    assert code == 0 and "mine: stopped" in out
    assert child.wait(timeout=5) == -signal.SIGTERM


def test_an_engine_is_gone_only_when_its_process_is():
    """`down` said 'stopped' while the engine still lived (CI, test_up_killed_in_detached_mode_status_and_down_
    recover: 'assert not pid_alive(...)' failed right after 'orphan: stopped'): an exiting process's
    /proc/PID/environ reads empty once its memory is released, so the token check fails before the process
    (and its port) is gone. gone() also waits for the recorded pid and start time to disappear. Here the
    token does not match (as while exiting) but the process lives: not gone until it has exited."""
    child = _ours(procs.new_token())
    owned = procs.Owned(child.pid, _wait_ticks(child.pid), procs.new_token())
    assert not owned.leader_alive() and owned.leader_exiting() and not owned.gone()
    child.kill()
    child.wait(timeout=5)
    assert not owned.leader_exiting() and owned.gone()
    # a reused pid (other start time) is never taken for the engine
    other = _ours(procs.new_token())
    assert not procs.Owned(other.pid, _wait_ticks(other.pid) + 1, "x" * 32).leader_exiting()
    other.kill()
    other.wait(timeout=5)
