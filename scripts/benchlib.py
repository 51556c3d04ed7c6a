"""Shared by the scripts/bench_*.py: each owns one "## Heading" section of BENCHMARKS.md."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREAMBLE = ("# Benchmarks\n\nEvery number here comes from a script in `scripts/`, run against its baseline "
            "in the same run on the machine named in each section.\n\n")


def update_benchmarks_md(heading: str, section: str) -> None:
    """Replace the section that starts with `heading` (or append it), leaving the others alone."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else PREAMBLE
    start = text.find(heading.rstrip("\n") + "\n")  # the whole line: "## Workflows" must not match a longer one
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def run_role(script: str, role: str, args: list[str]) -> dict | None:
    """Run one side of a benchmark in its own process (`script --role ROLE ARGS`),
    so each side's memory and threads are its own; its last stdout line is JSON."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, script, "--role", role, *args], stdout=subprocess.PIPE, text=True,
                          cwd=ROOT)
    if proc.returncode != 0:
        print(f"[{Path(script).stem}] {role} failed with {proc.returncode}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
