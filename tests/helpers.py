"""Test helpers shared across test modules (importable: tests/ is on sys.path via the root conftest)."""

import json
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
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



def bomb_png(width: int, height: int) -> bytes:
    """A valid 8-bit grayscale PNG of ``width`` x ``height`` zeros, compressed ~1000:1 (24000 x 24000: 0.6 MB, 0.5 s).

    The rows are deflated in blocks ending in a full flush, after which the same input compresses to the
    same bytes: one block is compressed twice and repeated, and the Adler-32 is summed over the real data."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    row, per = b"\x00" * (1 + width), min(64, height)
    n, rest = divmod(height, per)
    block = row * per
    z = zlib.compressobj(9)
    first = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    again = z.compress(block) + z.flush(zlib.Z_FULL_FLUSH)
    tail = z.compress(row * rest) + z.flush(zlib.Z_FULL_FLUSH) if rest else b""
    adler = 1
    for _ in range(n):
        adler = zlib.adler32(block, adler)
    adler = zlib.adler32(row * rest, adler)
    idat = first + again * (n - 1) + tail + b"\x03\x00" + struct.pack(">I", adler)  # 03 00: an empty final block
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


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
