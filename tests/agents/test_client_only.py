"""The SDK as a client-only install gets it: `pip install agentgate` (no extra) pulls no torch, and the
client's import path needs nothing beyond what that install brings. AGENTGATE_URL names the gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from agentgate import AsyncClient, Client

ROOT = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: torch (and the server-only packages) cannot be imported at all; then
# the SDK's whole client surface is imported and used offline; prints the top-level modules loaded.
PROBE = r"""
import importlib.abc, json, sys
BEFORE = set(sys.modules)  # the interpreter's own start-up (site, .pth hooks)
BLOCKED = {"torch", "numpy", "redis", "safetensors", "tokenizers", "xgrammar", "prometheus_client", "jinja2"}

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not part of a client-only install")

sys.meta_path.insert(0, Block())
import agentgate
from agentgate import AsyncClient, Client
from agentgate.workflow import Workflow
import agentgate.cli_run, agentgate.sequential, agentgate.tools

wf = Workflow()
a = wf.llm("a", "Name a fruit.")
wf.llm("b", f"What color is {a}?")
body = wf.validate().payload()
assert [n["id"] for n in body["nodes"]] == ["a", "b"], body
Client("http://127.0.0.1:9").close()
tops = sorted({m.split(".")[0] for m in set(sys.modules) - BEFORE} - set(sys.stdlib_module_names))
print(json.dumps(tops))
"""


def _requirement_names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[<>=!~; \[]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _closure(names: set[str]) -> set[str]:
    """The distributions installing `names` pulls in (their own requirements, no extras)."""
    from importlib.metadata import PackageNotFoundError, requires

    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = requires(name) or []
        except PackageNotFoundError:
            continue
        todo += _requirement_names([r for r in reqs if "extra ==" not in r])
    return seen


def test_the_base_install_has_no_torch_and_the_client_imports_without_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = _requirement_names(project["dependencies"])
    assert "torch" not in _closure(base)
    assert "torch==2.13.0" in project["optional-dependencies"]["server"]
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "agents") + os.pathsep + str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.strip().splitlines()[-1]))
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    ours = {"agentgate", "common", "engine", "gateway"}
    third_party = {m for m in loaded - ours if m in dists}
    needed = {d.lower().replace("_", "-") for m in third_party for d in dists[m]}
    assert needed <= _closure(base), f"the client imports packages the base install lacks: {needed - _closure(base)}"
    assert "torch" not in loaded


def test_the_clients_read_agentgate_url(monkeypatch):
    monkeypatch.setenv("AGENTGATE_URL", "http://gateway.example:8123/")
    assert Client().base_url == "http://gateway.example:8123"
    assert AsyncClient().base_url == "http://gateway.example:8123"
    assert Client("http://other:1").base_url == "http://other:1"  # an explicit URL wins
    monkeypatch.delenv("AGENTGATE_URL")
    assert Client().base_url == "http://127.0.0.1:8000"
