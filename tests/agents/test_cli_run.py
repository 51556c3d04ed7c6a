"""`agentgate run` on a .json and a .py workflow against the in-process gateway."""

from __future__ import annotations

import json
import textwrap

from agents.cli import main


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
        from agents.workflow import Workflow

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
