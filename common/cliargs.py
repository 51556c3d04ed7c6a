"""The argparse set-up of every `agentgate` command: each flag's help shows its default, and a bad
value ends in one line on stderr (exit status 2), not the whole usage or a traceback."""

from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, through add_subparsers, every subcommand's) with defaults in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def fail(prog: str, message: str) -> int:
    """A bad combination of values found after parsing: one line, exit status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


# aiohttp closes a connection whose request headers are not all in this long after it opened (or after
# its previous response): its keepalive timer runs from the start, and bytes trickling in do not reset it.
HEADER_TIMEOUT_S = 75.0


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
