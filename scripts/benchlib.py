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
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)
