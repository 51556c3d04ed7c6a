"""Plan → three reviewers in parallel → critic: the diamond every agent framework draws.

A planner reads a customer question and splits it into three review angles; a pricing
reviewer, a reliability reviewer and a security reviewer answer theirs at the same time;
a critic merges the three into one answer.

             ┌─→ pricing ─────┐
    plan ────┼─→ reliability ─┼─→ critic
             └─→ security ────┘

Each role has its own system prompt of about a thousand tokens (its instructions and the
reference documents of its trade from data/corpus/ and data/docs/), shared by every
workflow, as a team of agents in production shares one prompt per role. The user message
is short and quotes the upstream outputs. So every call after the first of its role finds
its whole system prompt cached — on the worker that ran that role before — and what a
worker computes is mostly decoding: the case where calls arriving together, batched
together, matter most.

    agentgate run agents/agentgate/examples/diamond.py [--quick] [--input question="..."]
"""

from __future__ import annotations

from pathlib import Path

from agentgate.workflow import Workflow

TEMPLATE = "nimbus-review-diamond"
DATA = Path(__file__).resolve().parent / "data"

# role → (instructions, reference documents appended to them)
ROLES = {
    "plan": ("You are the PLANNER of the Nimbus Cloud customer review desk. You read a customer's question "
             "and split it into exactly three review angles, one line each, numbered: (1) pricing, "
             "(2) reliability, (3) security. Each line names the one question that reviewer must answer "
             "for this customer. Write nothing else.",
             ("corpus/regions.md", "corpus/quotas.md", "docs/q2-platform-update.txt")),
    "pricing": ("You are the PRICING REVIEWER of the Nimbus Cloud customer review desk. You answer angle (1) "
                "of the plan: what the customer will pay, which discounts, credits or free-tier allowances "
                "apply, and what they would pay elsewhere in our regions. Quote prices exactly as the "
                "reference below gives them. At most three sentences.",
                ("corpus/compute-pricing.md", "corpus/storage-pricing.md", "corpus/network-egress.md",
                 "corpus/billing.md", "corpus/free-tier.md")),
    "reliability": ("You are the RELIABILITY REVIEWER of the Nimbus Cloud customer review desk. You answer "
                    "angle (2) of the plan: which SLA applies, what failed recently and what was done about "
                    "it, and how the customer should deploy to stay inside the SLA. At most three "
                    "sentences.",
                    ("corpus/sla.md", "docs/postmortem-eu-west-storage.txt", "docs/rfc-regional-failover.txt")),
    "security": ("You are the SECURITY REVIEWER of the Nimbus Cloud customer review desk. You answer angle (3) "
                 "of the plan: encryption, keys, compliance and data residency, and what customers like this "
                 "one asked us for. At most three sentences.",
                 ("corpus/security.md", "corpus/managed-databases.md", "docs/interviews-managed-postgres.txt",
                  "corpus/kubernetes.md")),
    "critic": ("You are the CRITIC of the Nimbus Cloud customer review desk. You read the plan and the three "
               "reviews, remove what contradicts the reference or the other reviews, and write the one answer "
               "the customer receives: at most four sentences, then one line that starts with 'SUPPORT:' and "
               "names the support plan that fits the customer.",
               ("corpus/support-plans.md", "corpus/gpu-instances.md", "docs/oncall-handoff.txt")),
}

QUESTIONS = (
    "We run a 40-node Postgres fleet in eu-west and must keep data in the EU. What does moving to Managed "
    "Postgres cost us, and what happens in a regional outage?",
    "Our start-up trains models on 8 GPUs for two weeks a month in ap-south. What will it cost, and can we "
    "rely on the capacity?",
    "A bank wants customer-managed keys for its database and a 99.95% SLA. Can we offer both, and at what "
    "price?",
    "We serve 30 TB of video a month from object storage in us-east to users in Europe. How do we cut the "
    "bill without losing availability?",
    "Our SaaS runs on the Kubernetes engine in us-west. What do we pay for the control plane, what SLA do we "
    "get, and how do we isolate tenants?",
    "A retailer expects 10x traffic on one day a year. Which quotas, prices and failover options apply?",
)


def system_prompt(role: str) -> str:
    instructions, refs = ROLES[role]
    docs = "\n\n".join(f"### {ref}\n{(DATA / ref).read_text().strip()}" for ref in refs)
    return f"{instructions}\n\n## Reference\n\n{docs}"


def build(quick: bool = False, variant: int = 0, max_tokens: int = 24) -> Workflow:
    """The review on question number `variant` (mod the list); every call answers in `max_tokens`
    tokens at most (quick: 8)."""
    n = 8 if quick else max_tokens
    wf = Workflow(TEMPLATE, inputs={"question": QUESTIONS[variant % len(QUESTIONS)]})
    plan = wf.llm("plan", "Customer question: {{inputs.question}}\n\nWrite the three review angles.",
                  system=system_prompt("plan"), max_tokens=n)
    reviews = []
    for number, role in enumerate(("pricing", "reliability", "security"), start=1):
        node = wf.llm(role, f"Customer question: {{{{inputs.question}}}}\n\nPlan:\n{plan}\n\nAnswer angle "
                            f"({number}).", system=system_prompt(role), max_tokens=n)
        reviews.append(f"({number}) {role}: {node}")
    wf.llm("critic", "Customer question: {{inputs.question}}\n\nPlan:\n" + str(plan) + "\n\n"
           + "\n".join(reviews) + "\n\nWrite the answer.", system=system_prompt("critic"), max_tokens=n)
    return wf
