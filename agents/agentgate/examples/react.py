"""ReAct: a support agent that calls a tool, reads its result, and repeats, on real tool calls.

A ReAct loop (call a tool → read the result → …, then answer) over the Nimbus Cloud docs,
with a search tool and a calculator (agents/agentgate/examples/tools.py), written as OpenAI
tool calling: each step is an LLM call with `tools` and tool_choice "required", so the
worker decodes it under the grammar of one call to search, calculator or final_answer
(even the 135M model writes a valid call), and the node's output is that parsed call
(`output="tool_calls"`: `[{"name": ..., "arguments": {...}}]`). The loop is unrolled into
a workflow the gateway runs, up to `steps` rounds:

    think_1 ─(not final_answer)→ act_1 → think_2 ─→ act_2 → … → act_K → answer ─→ finish
       └──────(final_answer)─────────────────────────────────────────────────────┘

`act_k` is a tool node the client runs: it runs the call think_k made and returns the
result. An edge leaves a think node toward the next act only while the model has not
called final_answer, and toward `finish` once it has, so the rest of the loop is skipped
as a real agent stops. `answer` calls final_answer by name when the step budget runs
out (its output is that call's arguments); `finish` takes the answer.

The loop is a chat, as agents send it: the long system prompt (rules, worked examples; the
worker adds the tool schemas), the question, then each step's call as an assistant turn and
its result as a `tool` turn. A node's messages are text, so the assistant turn writes the
call as the embedded model's template family does (`<tool_call>[...]</tool_call>`, the
tokens the step generated). Each step's prompt is the previous prompt plus that step's
output plus the tool's result, and only the result is new: the prefix cache (which keeps a
call's output too), routing that knows where it lives, and a pin held through the tool call
pay off.

    agentgate run agents/agentgate/examples/react.py [--quick] [--input question="..."]
"""

from __future__ import annotations

import json

from agentgate.examples.tools import CALCULATOR, CALL_MAX_TOKENS, FINAL_ANSWER, SEARCH, run_tool
from agentgate.workflow import Workflow, contains

TEMPLATE = "nimbus-react"

SYSTEM = """You are Nimbus Assist, the support and billing agent of Nimbus Cloud, a public cloud provider. \
Customers ask you about prices, regions, quotas, limits, the SLA, support plans and billing. You answer \
only from the Nimbus documentation, which you reach through tools, and you compute every number with the \
calculator tool rather than in your head. Prices in the documentation are base prices; regional prices \
differ, and you must apply the region factor when the customer names a region.

## Tools

You work by calling tools, one call per step:

- search(query): full-text search over the Nimbus Cloud documentation (pricing pages, regions, quotas, SLA, \
support plans, billing, managed databases, Kubernetes, security). It returns the two most relevant \
paragraphs, each prefixed with the title of its page. Write a few keywords, e.g. "n1.large price per \
hour" or "egress tiers", never a whole sentence.
- calculator(expression): evaluates one arithmetic expression and returns the number. It supports + - * \
/ // % **, parentheses and the functions round(x, digits), min, max, abs and sqrt. No variables, no \
units, no text: "3 * 0.168 * 730" or "round(1.08 * 4.10, 2)".
- final_answer(answer): gives the customer your answer and ends the conversation.

After each call the system replies with the tool's result. When you have enough results to answer, call \
final_answer.

## Rules

1. Never invent a price, a quota or a limit. If the documentation does not say it, search for it; if \
the search finds nothing, say in the final answer that the documentation does not cover it.
2. One tool call per step. Never write a tool's result yourself.
3. A month is 730 hours and a year is 8,760 hours, as the billing page says.
4. Apply region factors: 1.00 for us-east and eu-west, 1.05 for us-west, 1.08 for eu-north and 1.12 \
for ap-south.
5. Round money to cents in the final answer and say whether the price is per hour, per month or per year.
6. Be brief. Customers read your answer on a phone: one to three sentences, with the numbers and their \
units.

## Example 1

Question: What does one n1.medium cost for a 30-day month in us-west?
Call: search {"query": "n1.medium price per hour"}
Result: [Compute instance pricing] General purpose (n1): ... n1.medium has 4 vCPUs and 8 GiB for \
$0.084 per hour. ...
Call: calculator {"expression": "round(0.084 * 720 * 1.05, 2)"}
Result: 63.5
Call: final_answer {"answer": "One n1.medium in us-west costs about $63.50 for a 30-day month ($0.0882 \
per hour)."}

## Example 2

Question: Is there a free control plane for Kubernetes?
Call: search {"query": "Kubernetes control plane price"}
Result: [Nimbus Kubernetes Engine] Each cluster has a managed control plane that costs $0.10 per hour. \
The first cluster of every account has a free control plane. ...
Call: final_answer {"answer": "Yes: the first cluster of your account has a free control plane; each \
further cluster's control plane costs $0.10 per hour."}

## Example 3

Question: How much is 300 GB of standard object storage per month?
Call: search {"query": "standard object storage price per GB month"}
Result: [Object storage pricing] Standard storage costs $0.020 per GB per month. ...
Call: calculator {"expression": "round(300 * 0.020, 2)"}
Result: 6
Call: final_answer {"answer": "300 GB of standard object storage costs $6.00 per month."}
"""

QUESTIONS = (
    "What would three n1.large instances cost for a 30-day month in eu-west?",
    "If I keep 800 GB in cold object storage for a year, what will I pay?",
    "How much does 2.5 TB of internet egress cost in one month?",
    "My monthly cloud spend is $4,200. What would the Business support plan cost me?",
    "Which regions offer GPU instances, and what does a g1.xlarge cost per day in ap-south?",
    "Last month my multi-zone deployment had 99.5% uptime on a $1,800 compute bill. What credit do I get?",
    "How much do I save per year with a 3-year commitment on two c2.xlarge instances running all the time?",
    "What is the default vCPU quota per region, and how do I raise it to 40?",
)


STEP_TOOLS = [SEARCH, CALCULATOR, FINAL_ANSWER]
FIRST_TURN = "Question: {{inputs.question}}"
LAST_TURN = "You have used all your tool calls. Call final_answer now."


def _conversation(k: int) -> list[tuple[str, str]]:
    """The chat before think_k: the question, then each earlier step's call as the assistant's turn (in the
    embedded model's call format) and the tool's result as a `tool` turn."""
    turns = [("user", FIRST_TURN)]
    for j in range(1, k):
        turns += [("assistant", "<tool_call>{{think_%d}}</tool_call>" % j), ("tool", "{{act_%d}}" % j)]
    return turns


def _make_act(k: int):
    """The tool node after think_k: run the call that step made; the result is what the next step reads."""

    def act(call) -> str:
        [step] = json.loads(call.outputs[f"think_{k}"])
        return run_tool(step["name"], step["arguments"])

    act.__name__ = f"act_{k}"
    return act


def final_answer(step_output: str) -> str | None:
    """The answer of a step that called final_answer, else None."""
    try:
        calls = json.loads(step_output)
    except ValueError:
        return None
    for call in calls if isinstance(calls, list) else ():
        if isinstance(call, dict) and call.get("name") == "final_answer":
            return str((call.get("arguments") or {}).get("answer", "")).strip()
    return None


def _finish(outputs) -> str:
    """The agent's answer: the first final_answer a think step called, else what the forced answer said."""
    for node in sorted(n for n in outputs if n.startswith("think_")):
        answer = final_answer(outputs[node])
        if answer is not None:
            return answer
    forced = outputs.get("answer")  # final_answer's arguments, as JSON
    return str(json.loads(forced).get("answer", "")).strip() if forced else ""


CALLED_FINAL = contains('"name": "final_answer"')


def build(quick: bool = False, variant: int = 0, steps: int | None = None) -> Workflow:
    """The ReAct workflow for question number `variant` (mod the list). quick: one round."""
    steps = steps or (1 if quick else 3)
    wf = Workflow(TEMPLATE, inputs={"question": QUESTIONS[variant % len(QUESTIONS)]})
    for k in range(1, steps + 1):
        think = wf.llm(f"think_{k}", messages=_conversation(k), system=SYSTEM, max_tokens=CALL_MAX_TOKENS,
                       tools=STEP_TOOLS,
                       tool_choice="required", output="tool_calls")
        if k > 1:
            wf.edge(f"act_{k - 1}", think)
        wf.external(f"act_{k}", _make_act(k))
        wf.edge(think, f"act_{k}", when=~CALLED_FINAL)
    answer = wf.llm("answer", messages=_conversation(steps + 1) + [("user", LAST_TURN)], system=SYSTEM,
                    max_tokens=CALL_MAX_TOKENS, tools=STEP_TOOLS, output="tool_call",
                    tool_choice={"type": "function", "function": {"name": "final_answer"}})
    wf.external("finish", _finish)
    for k in range(1, steps + 1):
        wf.edge(f"think_{k}", "finish", when=CALLED_FINAL)
    wf.edge(answer, "finish")
    return wf
