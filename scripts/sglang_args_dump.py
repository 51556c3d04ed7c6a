"""Dump SGLang's real `launch_server` argument table, one argument a line.

Run it where sglang is installed (a GPU box), whenever the pinned SGLang
version moves:

    python scripts/sglang_args_dump.py > tests/engine/sglang/sglang-args-<version>.tsv

then point engine/sglang/pinned.py at the new version and run
tests/engine/sglang. The launcher tests check every flag it emits against this
table, so a renamed or removed SGLang flag fails there, not on a GPU.

Columns (tab-separated): the option strings (comma-joined), `switch` (takes no
value) or `value`, and the allowed choices (comma-joined; empty when free).
A header line records the sglang version.
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    from sglang.srt.server_args import ServerArgs
    from sglang.version import __version__

    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    print(f"# sglang {__version__}")
    for action in parser._actions:
        if not action.option_strings or "-h" in action.option_strings:
            continue
        kind = "switch" if action.nargs == 0 else "value"
        choices = ",".join(str(c) for c in action.choices) if action.choices else ""
        print(f"{','.join(action.option_strings)}\t{kind}\t{choices}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
