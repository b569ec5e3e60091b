"""Test helpers shared across test modules (importable: tests/ is on sys.path via the root conftest)."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, artifact, *args, grpc: bool = False):
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.grpc_url = None
        if grpc:
            gport = free_port()
            self.grpc_url = f"127.0.0.1:{gport}"
            args = (*args, "--grpc-port", str(gport))
        self.proc = subprocess.Popen([sys.executable, "-m", "wherevit.app.cli", "serve", str(artifact), "--port", str(self.port), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = _client()(self.url)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if client.is_server_ready():
                    return
            except Exception:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError("server did not become ready")

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout)
        return self.proc.returncode




def _client():
    import tritonclient.http as th

    return th.InferenceServerClient


# `python EXIT_PROBE OUT_DIR <wherevit args>` runs the CLI and records, just before the interpreter
# finalises, which threads and child processes are still alive (train/exit_probe.py)
EXIT_PROBE = Path(__file__).parent / "train" / "exit_probe.py"


def assert_left_cleanly(probe_dir: Path, world: int = 2) -> None:
    """Each rank's exit probe: no gloo thread and no child process was alive when finalisation began.

    A gloo thread there can free a Python-owned tensor after finalisation began and abort a finished
    run (issue 26); it means the process group was never destroyed.
    """
    for rank in range(world):
        file = Path(probe_dir) / f"rank{rank}.json"
        assert file.is_file(), f"rank {rank} never reached interpreter exit"
        rec = json.loads(file.read_text())
        gloo = [t for t in rec["threads"] if "gloo" in t]
        assert not gloo, f"rank {rank} reached interpreter exit with gloo threads {gloo} (process group never destroyed)"
        assert not rec["children"], f"rank {rank} reached interpreter exit with child processes {rec['children']}"
