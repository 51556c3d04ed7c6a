"""The SDK (import name `agentgate`, in the folder agents/) and the OpenAI Agents SDK
(PyPI openai-agents, import name `agents`) live in one environment: each import finds
its own package, in this process and in a fresh interpreter started at the repo root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import CHILD_PYTHONPATH, REPO_ROOT

SDK = REPO_ROOT / "agents" / "agentgate"


def _installed(module_file: str) -> bool:
    """Whether a module comes from an installed distribution (site-packages, wherever the venv lives, even
    inside the checkout) rather than from the checkout's own agents/ folder."""
    path = Path(module_file).resolve()
    return "site-packages" in path.parts and not path.is_relative_to(REPO_ROOT / "agents")


def test_both_import_here():
    import agents
    import agentgate
    from agentgate.client import Client

    from agents import Agent, Runner, function_tool  # the OpenAI Agents SDK's own names

    assert Path(agentgate.__file__).parent == SDK and Client.__module__ == "agentgate.client"
    assert _installed(agents.__file__)  # openai-agents, not this checkout's agents/ folder
    assert Agent and Runner and function_tool


def test_both_import_in_a_fresh_interpreter_at_the_repo_root():
    """The repo root on sys.path (as `python -m` from it puts it) must not shadow openai-agents."""
    code = ("import agents, agentgate, agentgate.langgraph, agentgate.workflow; from agents import Agent; "
            "print(agents.__file__); print(agentgate.__file__)")
    paths = os.pathsep.join(p for p in (CHILD_PYTHONPATH, os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": paths},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    agents_file, sdk_file = out.stdout.split()
    assert _installed(agents_file)
    assert Path(sdk_file).parent == SDK


def test_the_agents_folder_is_not_a_package():
    # an agents/__init__.py would make the folder a regular package that shadows openai-agents
    assert not (REPO_ROOT / "agents" / "__init__.py").exists()
