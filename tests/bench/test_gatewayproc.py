"""``bench.gatewayproc.ServerProcess``: a stop that leaves anything behind fails, naming it; a
start that prints nothing is diagnosed, with the log's last lines, before it is stopped.

The servers are tiny Python processes on free loopback ports: an HTTP server that answers 200
(``start`` waits for it), with a trick per test for what it leaves behind. Whatever a test
leaves on purpose is killed by PID at its end.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoint.process import group_members
from tests.support.process import ServerProcess, free_port
from tests.support.wait import wait_until

# argv: port, mode. Serves 200 on 127.0.0.1:port once its mode's children are in place.
SERVER = r"""
import http.server, os, signal, socket, subprocess, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]

class OK(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass

srv = http.server.HTTPServer(("127.0.0.1", port), OK)
if mode == "escape":
    # On SIGTERM, hand the listening socket to a child in a session of its own (made after the
    # stop looked at the tree, so it is in none of the groups the stop kills), then exit.
    def escape(*_):
        keep = subprocess.Popen(
            [sys.executable, "-c", KEEP_SERVING, str(srv.fileno())],
            pass_fds=[srv.fileno()], start_new_session=True,
        )
        print(f"escaped {keep.pid}", flush=True)
        os._exit(0)
    signal.signal(signal.SIGTERM, escape)
elif mode == "rejoin":
    rejoiner = subprocess.Popen(
        [sys.executable, "-c", REJOIN, str(srv.fileno())],
        pass_fds=[srv.fileno()], stdout=subprocess.PIPE,
    )
    print(f"rejoiner {rejoiner.stdout.readline().decode().strip()}", flush=True)
    def leave(*_):  # exit only once the rejoiner is out of the group the stop kills next
        end = time.monotonic() + 30
        while os.getpgid(rejoiner.pid) == os.getpgid(0) and time.monotonic() < end:
            time.sleep(0.01)
        os._exit(0)
    signal.signal(signal.SIGTERM, leave)
srv.serve_forever()
"""

# Accepts and closes connections on an inherited listening socket (argv[1]: its fd) for 60 s.
KEEP_SERVING = r"""
import socket, sys, time
s = socket.socket(fileno=int(sys.argv[1]))
s.settimeout(1.0)
end = time.monotonic() + 60
while time.monotonic() < end:
    try:
        s.accept()[0].close()
    except TimeoutError:
        pass
"""

# A member of the server's group that outlives the stop's SIGKILL to that group: on SIGTERM it
# moves to a group of its own; once its child (left in the server's group, ignoring SIGTERM) is
# killed and lies unreaped (a zombie keeps the group in existence), it moves back in. Until then
# it answers on the server's listening socket (argv[1]: its fd), so the stop's check cannot pass
# before it is back; then it closes the socket: only the member is left.
REJOIN = r"""
import os, select, signal, socket, subprocess, sys, time
listener = socket.socket(fileno=int(sys.argv[1]))
hold = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"
child = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE)
child.stdout.readline()
moved = []
def away(*_):
    os.setpgid(0, 0)
    moved.append(True)
signal.signal(signal.SIGTERM, away)
print(os.getpid(), flush=True)
sys.stdout.close()
def state(pid):
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]
end = time.monotonic() + 60
while time.monotonic() < end and not (moved and state(child.pid) == "Z"):
    if not moved:
        time.sleep(0.01)
    elif select.select([listener], [], [], 0.01)[0]:
        listener.accept()[0].close()
os.setpgid(0, os.getsid(0))
listener.close()
time.sleep(60)
"""

# Prints the launcher's line, then nothing, and never serves. The line comes from the shell,
# before Python starts: a start that loaded 2 cores cannot make it late (nor the chatty one's).
SILENT = ["sh", "-c", "echo 'launcher: starting the engine'; "
          f"exec {shlex.quote(sys.executable)} -c 'import time; time.sleep(60)'"]  # fmt: skip
CHATTY = ["sh", "-c", "while :; do echo loading; sleep 0.05; done"]


def _server(tmp_path: Path, argv: list[str], port: int) -> ServerProcess:
    return ServerProcess(
        argv=argv,
        env={"PYTHONUNBUFFERED": "1"},
        ready_url=f"http://127.0.0.1:{port}/",
        log_path=tmp_path / "server.log",
    )


def _logged_pid(server: ServerProcess, label: str) -> int:
    def found() -> int | None:
        m = re.search(rf"^{label} (\d+)$", server.log_tail(), re.M)
        return int(m.group(1)) if m else None

    return wait_until(found, f"{label!r} in {server.log_path}", 30, interval_s=0.05)


@contextlib.contextmanager
def _killed_at_the_end(server: ServerProcess) -> Iterator[list[int]]:
    """Yields a list for the PIDs a test leaves on purpose; kills them and the server's group."""
    left: list[int] = []
    try:
        yield left
    finally:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if server.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)


def _modes(mode: str) -> list[str]:
    script = SERVER.replace("KEEP_SERVING", repr(KEEP_SERVING)).replace("REJOIN", repr(REJOIN))
    return [script, "PORT", mode]


def _started(tmp_path: Path, mode: str) -> tuple[ServerProcess, int]:
    port = free_port()
    argv = [str(port) if a == "PORT" else a for a in _modes(mode)]
    return _server(tmp_path, [sys.executable, "-c", *argv], port).start(timeout_s=30), port


def test_a_clean_stop_leaves_no_member_and_no_listener(tmp_path: Path) -> None:
    server, port = _started(tmp_path, "plain")
    with _killed_at_the_end(server):
        pid = server.pid
        assert server.stop(grace_s=5, settle_s=5) == -signal.SIGTERM
        assert group_members(pid) == []
        with socket.socket() as s:  # the next start on this port can listen there
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do
            s.bind(("127.0.0.1", port))
            s.listen()


def test_a_listener_left_on_the_port_fails_the_stop(tmp_path: Path) -> None:
    """A child escapes the stop with the server's listening socket: the port still answers, so
    a later start there would meet the old server. The stop says so."""
    server, port = _started(tmp_path, "escape")
    with _killed_at_the_end(server) as left:
        with pytest.raises(AssertionError, match=rf"port {port} listening=True") as failed:
            try:
                server.stop(grace_s=5, settle_s=0.5)
            finally:
                left.append(_logged_pid(server, "escaped"))
        assert "members {}" in str(failed.value), "the group itself is empty"


def test_a_group_member_left_alive_fails_the_stop(tmp_path: Path) -> None:
    server, port = _started(tmp_path, "rejoin")
    with _killed_at_the_end(server) as left:
        rejoiner = _logged_pid(server, "rejoiner")
        left.append(rejoiner)
        with pytest.raises(AssertionError) as failed:
            server.stop(grace_s=5, settle_s=2)
        assert f"members {{{server.pid}: [{rejoiner}]}}" in str(failed.value)
        assert f"port {port} listening=False" in str(failed.value)


@pytest.mark.timeout(120)
def test_a_silent_start_is_diagnosed_with_the_log_tail_then_stopped(tmp_path: Path) -> None:
    """No output for ``silent_s``: the tree is sampled while it runs and the report shows the
    launcher's own line (it printed, then went quiet); at the deadline it is diagnosed again
    and stopped, leaving nothing."""
    server = _server(tmp_path, SILENT, free_port())
    with _killed_at_the_end(server):
        with pytest.raises(TimeoutError, match="not ready after 8 s") as failed:
            server.start(timeout_s=8, silent_s=2, sample_s=0.2)
        pid = server.pid
        assert group_members(pid) == [], "stopped after the diagnosis"
    report = (tmp_path / "server.log.silent.txt").read_text()
    quiet, timed_out = report.split("not ready after 8 s")
    assert "no output for 2 s" in quiet and quiet.count(f"=== process tree of {pid} ") == 1
    for part in (quiet, timed_out, str(failed.value)):
        tail = part.split("--- last lines of", 1)[1].split("--- end of log ---", 1)[0]
        assert "launcher: starting the engine" in tail
        assert f"pid {pid}: {sys.executable} -c" in part.split("--- end of log ---", 1)[1]


@pytest.mark.timeout(120)
def test_a_start_that_keeps_printing_is_not_called_silent(tmp_path: Path) -> None:
    server = _server(tmp_path, CHATTY, free_port())
    with _killed_at_the_end(server), pytest.raises(TimeoutError, match="not ready after 4 s"):
        server.start(timeout_s=4, silent_s=2, sample_s=0.2)
    report = (tmp_path / "server.log.silent.txt").read_text()
    assert "no output for" not in report and report.count("=== process tree of ") == 1
    assert "loading" in report.split("--- end of log ---", 1)[0]
