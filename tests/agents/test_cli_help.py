"""`agentgate --help` a person can read: every flag of every subcommand has help and shows its default;
a bad value is one line on stderr with exit status 2, no traceback."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentgate.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_every_flag_of_every_subcommand_has_help_and_shows_its_default():
    subcommands = _subcommands()
    assert {"worker", "gateway", "up", "prepare-model", "run"} <= set(subcommands)
    for name, parser in subcommands.items():
        assert isinstance(parser.formatter_class, type) and \
            issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter), name
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0] if action.option_strings else action.dest
            assert action.help and action.help != argparse.SUPPRESS, f"agentgate {name} {flag}: no help"
            assert flag in text
            if action.option_strings and action.default is not argparse.SUPPRESS:
                # the formatter appends "(default: ...)" to every optional flag's help
                assert "%(default)" in parser.formatter_class(name)._get_help_string(action), (name, flag)
    gateway = " ".join(subcommands["gateway"].format_help().split())
    assert "--policy {" in gateway and "(default: kv_aware)" in gateway
    assert "(default: info)" in gateway and "--access-log" in gateway and "--log-format {text,json}" in gateway
    worker = " ".join(subcommands["worker"].format_help().split())
    assert "(default: 30000)" in worker and "(default: 64)" in worker


@pytest.mark.parametrize("argv, message", [
    (["gateway", "--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
    (["worker", "--port", "eighty"], "argument --port: invalid int value: 'eighty'"),
    (["gateway", "--policy", "random-ish"], "argument --policy: invalid choice: 'random-ish'"),
    (["gateway", "--kv-credit-l2", "2", "--redis-url", "redis://127.0.0.1:1"],
     "--kv-credit-l2, --kv-credit-l3 and --affinity-threshold must be in [0, 1]"),
])
def test_a_bad_value_is_one_line_and_status_2(argv, message):
    proc = subprocess.run([sys.executable, "-m", "agentgate.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT / "agents") + os.pathsep + str(ROOT)})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_lowercase_or_uppercase_log_levels_both_parse():
    gateway = _subcommands()["gateway"]
    assert gateway.parse_args(["--log-level", "DEBUG"]).log_level == "debug"
    assert gateway.parse_args([]).log_format == "text" and gateway.parse_args([]).access_log is False
