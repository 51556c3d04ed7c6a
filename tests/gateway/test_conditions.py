"""Safe conditions: a regex edge condition runs in time linear in the output (RE2), and a
pattern RE2 cannot run (backreference, lookaround) is refused at submission with a 422."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.workflow.conditions import evaluate
from common.workflow.spec import Condition
from tests.gateway.support import llm
from tests.support import REPO_ROOT

# A backtracking engine takes 2^n steps on n characters here: 40 would take days.
CATASTROPHIC = """
from common.workflow.conditions import evaluate
from common.workflow.spec import Condition
cond = Condition("regex", "(a+)+$")
print(evaluate(cond, "a" * 40 + "b"), evaluate(cond, "a" * 100_000), evaluate(cond, "x" + "a" * 100_000 + "!"))
"""


def test_a_catastrophic_pattern_on_a_long_output_returns_the_right_answer():
    # In a child process, so that a backtracking engine would be stopped (the guard is a hang
    # guard, far above the milliseconds this takes) instead of freezing the test run.
    done = subprocess.run([sys.executable, "-c", CATASTROPHIC], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "False"]


@pytest.mark.parametrize("pattern,output,expected", [
    (r"^yes\b", "yes, go", True), (r"(?i)APPROVED", "approved", True), (r"\d{3}-\d{4}", "call 555-1234", True),
    (r"(?P<word>go)+", "stop", False)])
def test_re2_patterns_keep_their_meaning(pattern, output, expected):
    assert evaluate(Condition("regex", pattern), output) is expected


@pytest.mark.asyncio
@pytest.mark.parametrize("pattern", [r"(a)\1", r"foo(?=bar)", r"(?<!x)y"])
async def test_a_pattern_re2_lacks_is_refused_with_a_422(gateway, fake_workers, pattern):
    (w,) = await fake_workers(1)
    gw = await gateway([w.url])
    status, err, _ = await gw.call("POST", "/v1/workflows", {
        "nodes": [llm("a", "x"), llm("b", "y")], "edges": [{"from": "a", "to": "b", "condition": {"regex": pattern}}]})
    assert status == 422, err
    assert "edges.0.condition" in err["error"]["message"] and "RE2" in err["error"]["message"], err
    assert not w.calls


@pytest.mark.asyncio
@pytest.mark.timeout(60)  # a hang guard: a backtracking engine would hold the event loop for ever
async def test_a_regex_condition_on_a_long_output_routes_the_workflow(gateway, fake_workers):
    (w,) = await fake_workers(1, reply=lambda m: "a" * 5000 + "b" if m[-1]["content"] == "go" else "done")
    gw = await gateway([w.url])
    wf = await gw.submit({"nodes": [llm("first", "go"), llm("only_as", "x"), llm("ends_in_b", "y")],
                          "edges": [{"from": "first", "to": "only_as", "condition": {"regex": "^(a+)+$"}},
                                    {"from": "first", "to": "ends_in_b", "condition": {"regex": "(a+)+b$"}}]})
    body = await gw.wait(wf)
    assert body["status"] == "finished"
    assert body["nodes"]["only_as"]["status"] == "skipped" and body["outputs"]["ends_in_b"] == "done"
