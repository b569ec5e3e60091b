"""`python -m wherevit.app.cli ...` with a look at the process just before the interpreter finalises.

Run as ``python exit_probe.py OUT_DIR <cli args>`` (under torchrun or alone). An atexit hook,
registered before anything else and so run last, writes ``OUT_DIR/rank<RANK>.json`` with the
process's threads (by name) and live child processes: what will still be running while the
interpreter is torn down. A gloo thread there is what made finished runs abort (issue 26): it can
free a Python-owned tensor and take the GIL after finalisation began. Not a test module itself.
"""

import atexit
import json
import os
import runpy
import sys
from pathlib import Path


def _children() -> list[str]:
    """Live (not zombie) processes whose parent is this one, from /proc."""
    me, out = os.getpid(), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if int(fields[1]) == me and fields[0] != "Z":
            out.append(f"{pid} {stat[stat.index('(') + 1:stat.rindex(')')]}")
    return out


def _threads() -> list[str]:
    names = []
    for tid in sorted(os.listdir("/proc/self/task")):
        try:
            names.append(Path(f"/proc/self/task/{tid}/comm").read_text().strip())
        except OSError:
            pass  # ended meanwhile
    return names


def _probe(out: Path) -> None:
    record = {"rank": os.environ.get("RANK", "0"), "threads": _threads(), "children": _children()}
    (out / f"rank{record['rank']}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    out_dir = Path(sys.argv.pop(1))
    atexit.register(_probe, out_dir)
    sys.argv[0] = "wherevit"
    runpy.run_module("wherevit.app.cli", run_name="__main__", alter_sys=True)
