"""ReAct: a support agent that thinks, calls a tool, reads the observation, and repeats.

The classic text ReAct loop (Thought → Action → Observation …, then Final Answer) over the
Nimbus Cloud docs, with a search tool and a calculator (agents/agentgate/examples/tools.py). The loop
is unrolled into a workflow the gateway runs, up to `steps` rounds:

    think_1 ─(no Final Answer)→ act_1 → think_2 ─→ act_2 → … → act_K → answer ─→ finish
       └──────(Final Answer)─────────────────────────────────────────────────────┘

`think_k` is an LLM call; `act_k` is a tool node the client runs (it parses the action,
calls the tool, and returns the observation); an edge leaves a
think node toward the next act only while the model has not written "Final Answer:", and
toward `finish` once it has — so the rest of the loop is skipped, as a real agent stops.
`answer` forces an answer when the step budget runs out; `finish` extracts it.

The loop is a chat, as agents send it: the long system prompt (tool schemas, rules, worked
examples), the question, then each step's output as an assistant turn and its observation as
the next user turn. So each step's prompt is the previous prompt plus that step's output plus
the observation, and only the observation is new: the prefix cache (which keeps a call's
output too), routing that knows where it lives, and a pin held through the tool call pay off.

    agentgate run agents/agentgate/examples/react.py [--quick] [--input question="..."]
"""

from __future__ import annotations

from agentgate.examples.tools import FINAL_ANSWER, final_answer, observe
from agentgate.workflow import Workflow, contains

TEMPLATE = "nimbus-react"

SYSTEM = """You are Nimbus Assist, the support and billing agent of Nimbus Cloud, a public cloud provider. \
Customers ask you about prices, regions, quotas, limits, the SLA, support plans and billing. You answer \
only from the Nimbus documentation, which you reach through tools, and you compute every number with the \
calculator tool rather than in your head. Prices in the documentation are base prices; regional prices \
differ, and you must apply the region factor when the customer names a region.

## Tools

You can call exactly one tool per step. The tools are described with JSON schemas:

{"name": "search", "description": "Full-text search over the Nimbus Cloud documentation (pricing pages, \
regions, quotas, SLA, support plans, billing, managed databases, Kubernetes, security). Returns the two \
most relevant paragraphs, each prefixed with the title of its page.", "parameters": {"type": "object", \
"properties": {"query": {"type": "string", "description": "A few keywords, e.g. 'n1.large price per \
hour' or 'egress tiers'. Do not write a whole sentence."}}, "required": ["query"]}}

{"name": "calculator", "description": "Evaluates one arithmetic expression and returns the number. \
Supports + - * / // % **, parentheses and the functions round(x, digits), min, max, abs and sqrt. \
No variables, no units, no text.", "parameters": {"type": "object", "properties": {"expression": \
{"type": "string", "description": "For example '3 * 0.168 * 730' or 'round(1.08 * 4.10, 2)'."}}, \
"required": ["expression"]}}

## Format

Always answer in this exact format, one step at a time:

Thought: what you know so far and what you need next.
Action: search[keywords]   or   Action: calculator[expression]

Then stop and wait. The system replies with a line that starts with "Observation:". After enough \
observations to answer, write:

Thought: I now know the answer.
Final Answer: the answer for the customer, in one to three sentences, with the numbers and their units.

## Rules

1. Never invent a price, a quota or a limit. If the documentation does not say it, search for it; if \
the search finds nothing, say in the Final Answer that the documentation does not cover it.
2. One action per step. Do not write an Observation yourself.
3. A month is 730 hours and a year is 8,760 hours, as the billing page says.
4. Apply region factors: 1.00 for us-east and eu-west, 1.05 for us-west, 1.08 for eu-north and 1.12 \
for ap-south.
5. Round money to cents in the Final Answer and say whether the price is per hour, per month or per year.
6. Be brief. Customers read your answer on a phone.

## Example 1

Question: What does one n1.medium cost for a 30-day month in us-west?
Thought: I need the base price of n1.medium.
Action: search[n1.medium price per hour]
Observation: [Compute instance pricing] General purpose (n1): ... n1.medium has 4 vCPUs and 8 GiB for \
$0.084 per hour. ...
Thought: 30 days is 720 hours, and us-west is 5% above base.
Action: calculator[round(0.084 * 720 * 1.05, 2)]
Observation: 63.5
Thought: I now know the answer.
Final Answer: One n1.medium in us-west costs about $63.50 for a 30-day month ($0.0882 per hour).

## Example 2

Question: Is there a free control plane for Kubernetes?
Thought: I should look up the Kubernetes control plane price.
Action: search[Kubernetes control plane price]
Observation: [Nimbus Kubernetes Engine] Each cluster has a managed control plane that costs $0.10 per \
hour. The first cluster of every account has a free control plane. ...
Thought: I now know the answer.
Final Answer: Yes: the first cluster of your account has a free control plane; each further cluster's \
control plane costs $0.10 per hour.
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


FIRST_TURN = "Question: {{inputs.question}}\n\nBegin with your first Thought."
NEXT_TURN = "Observation: {{act_%d}}\n\nContinue with your next Thought."
LAST_TURN = "Observation: {{act_%d}}\n\nYou have used all your tool calls. Write your Final Answer now."


def _conversation(k: int, last_turn: str = NEXT_TURN) -> list[tuple[str, str]]:
    """The chat before think_k: the question, then each earlier step's output as the assistant's turn
    and its observation as the user's next turn (last_turn words the final one)."""
    turns = [("user", FIRST_TURN)]
    for j in range(1, k):
        turns += [("assistant", "{{think_%d}}" % j), ("user", (NEXT_TURN if j < k - 1 else last_turn) % j)]
    return turns


def _make_act(k: int):
    """The tool node after think_k: run the action that step wrote; the result is the observation."""

    def act(call) -> str:
        return observe(call.outputs[f"think_{k}"].strip(), call.inputs["question"])

    act.__name__ = f"act_{k}"
    return act


def _finish(outputs) -> str:
    """The agent's answer: the first Final Answer a think step wrote, else what the forced answer said."""
    for node in sorted(n for n in outputs if n.startswith("think_")):
        answer = final_answer(outputs[node])
        if answer is not None:
            return answer
    return final_answer(outputs.get("answer", "")) or outputs.get("answer", "").strip()


def build(quick: bool = False, variant: int = 0, steps: int | None = None) -> Workflow:
    """The ReAct workflow for question number `variant` (mod the list). quick: one round, short answers."""
    steps = steps or (1 if quick else 3)
    think_tokens, answer_tokens = (24, 24) if quick else (64, 96)
    wf = Workflow(TEMPLATE, inputs={"question": QUESTIONS[variant % len(QUESTIONS)]})
    for k in range(1, steps + 1):
        think = wf.llm(f"think_{k}", messages=_conversation(k), system=SYSTEM, max_tokens=think_tokens,
                       stop=["\nObservation:"])
        if k > 1:
            wf.edge(f"act_{k - 1}", think)
        wf.external(f"act_{k}", _make_act(k))
        wf.edge(think, f"act_{k}", when=~contains(FINAL_ANSWER))
    answer = wf.llm("answer", messages=_conversation(steps + 1, LAST_TURN), system=SYSTEM, max_tokens=answer_tokens)
    wf.external("finish", _finish)
    for k in range(1, steps + 1):
        wf.edge(f"think_{k}", "finish", when=contains(FINAL_ANSWER))
    wf.edge(answer, "finish")
    return wf
