"""Map-reduce summarization: summarize each document in parallel, then merge the summaries.

The documents are internal Nimbus Cloud texts shipped in data/docs/ (a postmortem, a
quarterly update, customer interviews, an RFC, an on-call handoff). Each is split into
chunks of at most `CHUNK_WORDS` words on paragraph boundaries; every chunk is one `map_*`
LLM call, and they all run at once. Two reduce calls then read every summary: `digest`
writes the digest for the reader named in the inputs, and `actions` pulls the action items
out as JSON, in parallel with it.

    map_0 ─┐
    map_1 ─┼─→ digest
    …      ├─→ actions
    map_n ─┘

Every call shares one long system prompt (the digest pipeline's style guide), and each map
prompt puts the document before the audience, so the same document summarized for another
reader reuses its cached prefix.

    agentgate run agents/agentgate/examples/map_reduce.py [--quick] [--input audience="..."]
"""

from __future__ import annotations

from pathlib import Path

from agentgate.workflow import Workflow

TEMPLATE = "nimbus-digest"
DOCS_DIR = Path(__file__).resolve().parent / "data" / "docs"
CHUNK_WORDS = 260

SYSTEM = """You are the summarization stage of the Nimbus Cloud weekly digest, an internal newsletter \
that tells engineers, managers and executives what happened across the platform organization. Several \
copies of you run in parallel: each reads one document (or one part of a long document) and writes its \
summary; a later stage merges the summaries into the digest and extracts action items. Your summary is \
the only thing the later stage sees, so it must carry every fact that matters and nothing else.

## What to keep

- What happened, when, and how big it was: dates, durations, percentages, counts and money, exactly as \
the document states them. Never round a number and never compute a new one.
- Decisions and their reasons, in one clause each.
- Problems that are still open, and risks the document names.
- Action items with their owner and due date when the document gives them.
- Customer impact: who was affected and how.

## What to drop

- Background the reader already knows (what Nimbus Cloud is, what a region is).
- Names of individual people: use roles and teams ("the storage team", "the on-call engineer").
- Politeness, hedging and repetition.

## Style

1. Plain English, short sentences, active voice.
2. Start with the single most important fact.
3. Use the document's own terms for products and services (n1.small, Managed Postgres, eu-west-b).
4. No headings, no bullet lists, no markdown: one paragraph of three to five sentences.
5. Do not add opinions, advice or anything the document does not say. If the document is unclear, say \
what is unclear instead of guessing.
6. Write for the reader the request names: an executive wants impact and cost, an engineer wants causes \
and fixes, a support lead wants customer impact and workarounds.

## Example

Document: a change log saying that on 2 May the API gateway in us-west was upgraded, that 0.4% of \
requests failed with HTTP 502 for 11 minutes during the upgrade, and that the networking team will add a \
connection-draining step before the next upgrade, due 16 May.
Summary for an executive: "A us-west API gateway upgrade on 2 May failed 0.4% of requests for 11 \
minutes. The networking team will add connection draining to upgrades by 16 May."

## Merging (for the reduce stage)

When you are given several summaries instead of a document, merge them: group related facts, keep every \
number, drop duplicates, and put the most important item first. When you are asked for action items, \
answer with a JSON list of objects with the keys "item", "owner" and "due" (use null when the summaries \
do not say), and nothing else.
"""

AUDIENCES = ("the VP of engineering", "the on-call engineers", "the customer support leads",
             "the finance team", "a new engineer in their first week")


def documents() -> list[tuple[str, str]]:
    """(name, text) of every shipped document, in a fixed order."""
    return [(p.stem, p.read_text().strip()) for p in sorted(DOCS_DIR.glob("*.txt"))]


def chunks(text: str, max_words: int = CHUNK_WORDS) -> list[str]:
    """The text cut into pieces of at most max_words words, on paragraph boundaries where possible
    (a single longer paragraph is cut on words)."""
    out: list[str] = []
    current: list[str] = []
    for para in (p.strip() for p in text.split("\n\n")):
        words = para.split()
        while len(words) > max_words:
            if current:
                out.append("\n\n".join(current))
                current = []
            out.append(" ".join(words[:max_words]))
            words = words[max_words:]
        if current and sum(len(c.split()) for c in current) + len(words) > max_words:
            out.append("\n\n".join(current))
            current = []
        if words:
            current.append(" ".join(words))
    if current:
        out.append("\n\n".join(current))
    return out


def build(quick: bool = False, variant: int = 0) -> Workflow:
    """Digest of the documents for one audience. variant picks the audience and which documents
    (a rotating window of three; quick: two documents, short summaries)."""
    docs = documents()
    count = 2 if quick else 3
    picked = [docs[(variant + i) % len(docs)] for i in range(count)]
    map_tokens, reduce_tokens = (24, 32) if quick else (80, 128)
    wf = Workflow(TEMPLATE, inputs={"audience": AUDIENCES[variant % len(AUDIENCES)]})
    maps = []
    for name, text in picked:
        parts = chunks(text)
        for i, part in enumerate(parts):
            where = f" (part {i + 1} of {len(parts)})" if len(parts) > 1 else ""
            maps.append(wf.llm(f"map_{len(maps)}", f"Document `{name}`{where}:\n\n{part}\n\n"
                               "Summarize this document for {{inputs.audience}}.", system=SYSTEM,
                               max_tokens=map_tokens))
    summaries = "\n\n".join(f"Summary {i + 1}:\n{m}" for i, m in enumerate(maps))
    wf.llm("digest", f"{summaries}\n\nMerge these summaries into this week's digest for "
                     "{{inputs.audience}}.", system=SYSTEM, max_tokens=reduce_tokens)
    wf.llm("actions", f"{summaries}\n\nList every action item in these summaries as JSON.", system=SYSTEM,
           max_tokens=reduce_tokens)
    return wf
