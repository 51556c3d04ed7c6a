"""Planner → parallel executors → critic: a launch council of agents.

A planner splits a product-launch task into workstreams; three executors (market analyst,
engineer, risk officer) work on them at the same time; a critic scores their findings and
either approves or asks for a revision; a writer turns it all into the launch brief.

               ┌─→ market ──────┐
    plan ──────┼─→ engineering ─┼─→ critic ─(VERDICT: REVISE)→ revise ─┐
               └─→ risk ────────┘       └──────────────────────────────┴─→ brief

All agents share the council charter as their system prompt, as multi-agent frameworks
do with a team's shared context: each role's instructions come after it, in the user
message. So every call after the first starts with ~1,000 cached tokens — where the worker
that holds them is.

    agentgate run agents/agentgate/examples/multi_agent.py [--quick] [--input task="..."]
"""

from __future__ import annotations

from agentgate.workflow import Workflow, contains

TEMPLATE = "nimbus-launch-council"

CHARTER = """You are a member of the Nimbus Cloud launch council, a team of AI agents that prepares \
product launches for Nimbus Cloud, a public cloud provider with five regions (us-east, us-west, eu-west, \
eu-north, ap-south), general-purpose, compute, memory and GPU instances, block and object storage, \
Managed Postgres, a Kubernetes engine and four support plans. Each member has one role, and the roles \
work on the same task at the same time, so stay inside your own role and trust the others to cover theirs.

## The roles

- PLANNER: reads the task and writes the plan: exactly three workstreams, one line each, numbered 1 to 3: \
(1) market, (2) engineering, (3) risk. Each line names the question that workstream must answer.
- MARKET ANALYST: works on workstream 1: who the customers are, what they pay today, what competitors \
offer, what price and packaging we should launch with.
- ENGINEER: works on workstream 2: what must be built or changed, in which regions first, what it \
depends on, and how long it takes.
- RISK OFFICER: works on workstream 3: security, compliance and data-residency risks, capacity risks, \
and what could go wrong on launch day.
- CRITIC: reads the three workstreams' findings and checks them against the task: gaps, contradictions, \
claims without numbers. Ends with exactly one line, "VERDICT: APPROVE" or "VERDICT: REVISE".
- WRITER: turns the plan, the findings and the critique into the launch brief.

## Facts every member may use

- Base prices apply in us-east and eu-west; us-west is 5% higher, eu-north 8%, ap-south 12%.
- GPU instances exist only in us-east, eu-north and ap-south; GPU capacity in us-east is 91% allocated.
- Compute SLA: 99.95% multi-zone, 99.9% single zone; credits of 10%, 25% or 100%.
- Managed Postgres: blue-green upgrades and query insights are the top customer requests; customer-managed \
keys block a large bank account.
- Cross-region object replication ships in the third quarter; the storage rollout safety work from the \
March postmortem is still open.
- Support plans: Basic (free), Developer ($29/month), Business (greater of $100 or 10% of spend), \
Enterprise (greater of $15,000 or 5% of spend).

## How to write

1. Stay in your role. Start your answer with your role name in capitals and a colon.
2. Be concrete: name regions, products, numbers and dates. If you need a fact you do not have, write \
"UNKNOWN:" and the question, instead of guessing.
3. At most five short bullet points or sentences, unless your role says otherwise.
4. Never repeat what another role already said; refer to it by workstream number.
5. No greetings, no closing remarks, no markdown headings.
"""

TASKS = (
    "Launch Managed Postgres with blue-green major version upgrades in eu-west and eu-north.",
    "Launch GPU instances with per-second billing in ap-south for AI start-ups.",
    "Launch a cheaper high-availability tier of Managed Postgres for staging environments.",
    "Launch customer-managed encryption keys for Managed Postgres, for regulated customers.",
    "Launch a Frankfurt region as the sixth Nimbus Cloud region.",
    "Launch query insights for Managed Postgres in every region.",
)

EXECUTORS = (
    ("market", "MARKET ANALYST", 1),
    ("engineering", "ENGINEER", 2),
    ("risk", "RISK OFFICER", 3),
)


def build(quick: bool = False, variant: int = 0) -> Workflow:
    """The council on task number `variant` (mod the list). quick: two executors, short answers."""
    work, review, short = (24, 24, 16) if quick else (96, 64, 48)
    executors = EXECUTORS[:2] if quick else EXECUTORS
    wf = Workflow(TEMPLATE, inputs={"task": TASKS[variant % len(TASKS)]})
    plan = wf.llm("plan", "Task: {{inputs.task}}\n\nYou are the PLANNER. Write the three workstreams.",
                  system=CHARTER, max_tokens=short)
    findings = []
    for node, role, number in executors:
        wf.llm(node, f"Task: {{{{inputs.task}}}}\n\nPlan:\n{plan}\n\nYou are the {role}. Work on workstream "
                     f"{number} and give your findings.", system=CHARTER, max_tokens=work)
        findings.append(f"Workstream {number} ({role}):\n{{{{{node}}}}}")
    joined = "\n\n".join(findings)
    critic = wf.llm("critic", f"Task: {{{{inputs.task}}}}\n\nPlan:\n{plan}\n\n{joined}\n\nYou are the CRITIC. "
                              "Review the findings.", system=CHARTER, max_tokens=review)
    revise = wf.llm("revise", f"Task: {{{{inputs.task}}}}\n\nPlan:\n{plan}\n\nCritique:\n{critic}\n\nYou are "
                              "the PLANNER. Revise the plan to answer the critique.", system=CHARTER,
                    max_tokens=short)
    wf.only_if(critic, revise, when=contains("VERDICT: REVISE"))  # it also quotes the plan: the critic decides
    wf.llm("brief", f"Task: {{{{inputs.task}}}}\n\nPlan:\n{plan}\n\n{joined}\n\nCritique:\n{critic}\n\n"
                    f"Revised plan (empty if none):\n{revise}\n\nYou are the WRITER. Write the launch brief.",
           system=CHARTER, max_tokens=review)
    return wf
