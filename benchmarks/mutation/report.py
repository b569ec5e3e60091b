"""Summarise a finished mutmut run of ``benchmarks/mutation/stage.py`` into a report.

Reads every ``mutants/**/*.meta`` (mutmut's per-file results), counts killed / survived /
timeout / no tests per file, and writes ``report.json`` and ``report.md`` with every mutant that
was not killed, its diff (``mutmut show``), and the explanation in ``explanations.py``:
``equivalent`` (the mutant computes the same thing, so no test can kill it) or ``gap`` (it changes
behaviour and no fast method test notices). The kill rate is over the mutants that change behaviour:
killed / (all - equivalent).

    python benchmarks/mutation/report.py /tmp/wherevit-mutation --out benchmarks/results/mutation
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from explanations import explain  # noqa: E402

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout",
          24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault", None: "not checked"}


def load(stage: Path) -> dict[str, tuple[str, str]]:
    """mutant name -> (file, status)."""
    out = {}
    for meta in sorted((stage / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        rel = str(meta.relative_to(stage / "mutants"))[: -len(".meta")]
        for name, code in data.get("exit_code_by_key", {}).items():
            out[name] = (rel, STATUS.get(code, "suspicious"))
    return out


def show(stage: Path, name: str) -> str:
    res = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=stage, capture_output=True, text=True,
                         timeout=120)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
    return "\n".join(lines) or res.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stage", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--command", default="")
    args = ap.parse_args(argv)
    results = load(args.stage)
    by_file: dict[str, Counter] = defaultdict(Counter)
    rows = []
    for name, (file, status) in sorted(results.items()):
        by_file[file][status] += 1
        if status == "killed":
            continue
        diff = show(args.stage, name)
        kind, why = explain(name, file, status, diff)
        by_file[file][f"{status}:{kind}"] += 1
        rows.append({"mutant": name, "file": file, "status": status, "diff": diff, "class": kind, "why": why})
    total = len(results)
    killed = sum(1 for f, s in results.values() if s == "killed")
    equivalent = sum(1 for r in rows if r["class"] == "equivalent")
    gaps = [r for r in rows if r["class"] != "equivalent"]
    rate = killed / max(total - equivalent, 1)
    doc = {"tool": "mutmut", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"platform": platform.platform(), "python": platform.python_version()}, "command": args.command,
           "total": total, "killed": killed, "equivalent": equivalent, "not_killed_behaviour_changing": len(gaps),
           "kill_rate_of_behaviour_changing": rate,
           "by_file": {f: dict(c) for f, c in sorted(by_file.items())}, "not_killed": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(doc, indent=1))
    md = ["# Mutation testing of the method code (mutmut)\n",
          f"{total} mutants: **{killed} killed**, {equivalent} equivalent (cannot change behaviour), "
          f"{len(gaps)} behaviour-changing mutants not killed. Kill rate of the behaviour-changing mutants: "
          f"**{rate:.1%}** (killed / (total - equivalent)).\n", f"Command: `{args.command}`\n",
          "| file | killed | not killed: equivalent | not killed: gap |", "| --- | --- | --- | --- |"]
    for f, c in sorted(by_file.items()):
        eq = sum(v for k, v in c.items() if k.endswith(":equivalent"))
        gap = sum(v for k, v in c.items() if ":" in k and not k.endswith(":equivalent"))
        md.append(f"| {f} | {c['killed']} | {eq} | {gap} |")
    md.append("\n## Every mutant not killed\n")
    for r in rows:
        md.append(f"### `{r['mutant']}` ({r['status']}, {r['class']})\n\n{r['why']}\n\n```diff\n{r['diff']}\n```\n")
    (args.out / "report.md").write_text("\n".join(md))
    print(f"{total} mutants, {killed} killed, {equivalent} equivalent, {len(gaps)} gaps: kill rate {rate:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
