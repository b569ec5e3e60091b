"""Test helpers shared across test modules (importable: tests/ is on sys.path via the root conftest)."""

import signal
import socket
import subprocess
import sys
import time


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
