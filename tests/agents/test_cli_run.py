"""`agentgate run` on a .json and a .py workflow against the in-process gateway."""

from __future__ import annotations

import json
import textwrap

import pytest

from agentgate.cli import main


def test_run_a_json_workflow_with_inputs(gw, tmp_path, capsys):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps({"nodes": [
        {"id": "greet", "messages": [{"role": "user", "content": "hello {{inputs.who}}"}]},
        {"id": "again", "messages": [{"role": "user", "content": "hello {{inputs.who}} and {{greet}}"}]}],
        "inputs": {"who": "nobody"}}))
    assert main(["run", str(path), "--gateway", gw.url, "--input", "who=ada"]) == 0
    out = capsys.readouterr().out
    assert "echo: hello ada" in out and "finished" in out
    assert "prefix cache:" in out and "cached" in out
    for column in ("node", "status", "tokens", "ttft", "prompt", "completion"):
        assert column in out


def test_run_a_python_workflow_with_a_tool(gw, tmp_path, capsys):
    path = tmp_path / "agent.py"
    path.write_text(textwrap.dedent('''
        from agentgate.workflow import Workflow

        def build():
            wf = Workflow("cli-py", inputs={"n": "2"})
            ask = wf.llm("ask", "square {{inputs.n}}")

            @wf.tool(after=ask)
            def square(n):
                return str(int(n) ** 2)

            wf.llm("tell", f"the answer is {square}")
            return wf
    '''))
    assert main(["run", str(path), "--gateway", gw.url, "--input", "n=7"]) == 0
    out = capsys.readouterr().out
    assert "echo: the answer is 49" in out


def test_run_reports_validation_problems(gw, tmp_path, capsys):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"nodes": [{"id": "a", "messages": [{"role": "user", "content": "{{ghost}}"}]}]}))
    assert main(["run", str(path), "--gateway", gw.url]) == 2
    assert "unknown node reference {{ghost}}" in capsys.readouterr().out


def test_quick_reaches_build_and_client_driven_agents(gw, tmp_path, capsys):
    path = tmp_path / "agent.py"
    path.write_text(textwrap.dedent('''
        from agentgate.workflow import Workflow

        def build(quick=False):
            wf = Workflow()
            wf.llm("size", "quick run" if quick else "full run")
            return wf
    '''))
    assert main(["run", str(path), "--gateway", gw.url, "--quick"]) == 0
    assert "echo: quick run" in capsys.readouterr().out

    driven = tmp_path / "driven.py"
    driven.write_text(textwrap.dedent('''
        from agentgate.state import AgentRun, CallInfo

        def run_agent(client, *, quick, inputs):
            reply = client.chat(f"quick={quick} who={inputs.get('who')}", agent_hints={"node_id": "ask"})
            return AgentRun({"reply": reply.text}, (CallInfo("ask", reply.usage["prompt_tokens"],
                                                             reply.cached_tokens, reply.usage["completion_tokens"]),))
    '''))
    assert main(["run", str(driven), "--gateway", gw.url, "--quick", "--input", "who=ada"]) == 0
    out = capsys.readouterr().out
    assert "echo: quick=True who=ada" in out and "agent: finished (1 calls)" in out and "prefix cache:" in out


def test_quick_is_refused_where_it_means_nothing(tmp_path):
    plain = tmp_path / "plain.py"
    plain.write_text("def build():\n    return {'nodes': [{'id': 'a', 'type': 'external'}]}\n")
    with pytest.raises(SystemExit, match="no `quick` parameter"):
        main(["run", str(plain), "--quick"])
    body = tmp_path / "wf.json"
    body.write_text(json.dumps({"nodes": [{"id": "a", "messages": [{"role": "user", "content": "x"}]}]}))
    with pytest.raises(SystemExit, match="--quick applies to .py files"):
        main(["run", str(body), "--quick"])
