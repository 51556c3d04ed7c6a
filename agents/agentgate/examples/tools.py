"""The tools of the ReAct examples: a calculator and a search over a small local knowledge base.

The knowledge base is the Nimbus Cloud documentation in data/corpus/ (a fictional cloud
provider: prices, regions, quotas, SLA), split into paragraphs and ranked with BM25, as a
retrieval tool in front of a real wiki would do. The calculator evaluates arithmetic only
(an AST walk, never `eval`). `parse_action` reads the model's `Action: tool[input]` line
the way text-based ReAct agents do, and `observe` turns it into the observation the next
step sees — including the error message a real agent shows the model when it wrote no
valid action.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CORPUS_DIR = Path(__file__).resolve().parent / "data" / "corpus"
TOOL_NAMES = ("search", "calculator")
MAX_OBSERVATION_CHARS = 900


# -- calculator ------------------------------------------------------------------------------------------
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")  # 8,760 → 8760, but round(x, 2) keeps its comma
_FUNCTIONS = {"round": round, "min": min, "max": max, "abs": abs, "sqrt": math.sqrt}


def calculate(expression: str) -> str:
    """The value of an arithmetic expression ("3 * 0.168 * 730", "round(1.08 * 4.10, 2)"), as text;
    "Error: ..." for anything else. Commas and $ signs are tolerated, as models write them."""
    text = _THOUSANDS.sub("", expression).replace("$", "").replace("×", "*").strip().strip("`\"'")
    try:
        value = _eval(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError, ZeroDivisionError, OverflowError) as exc:
        return f"Error: cannot evaluate {expression!r} ({exc.__class__.__name__}: {exc})"
    if isinstance(value, float):
        value = round(value, 6)
        if value.is_integer():
            value = int(value)
    return str(value)


def _eval(node: ast.AST):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS
            and not node.keywords):
        return _FUNCTIONS[node.func.id](*(_eval(a) for a in node.args))
    raise ValueError(f"unsupported syntax: {ast.dump(node)[:60]}")


# -- search ------------------------------------------------------------------------------------------------
_WORD = re.compile(r"[a-z0-9]+(?:\.[a-z0-9]+)?")


@dataclass(frozen=True)
class Passage:
    doc: str  # the document's title
    text: str


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class Corpus:
    """Paragraphs of markdown documents, ranked by BM25 (k1 1.2, b 0.75) for a query."""

    def __init__(self, directory: Path = CORPUS_DIR):
        self.passages: list[Passage] = []
        for path in sorted(directory.glob("*.md")):
            lines = path.read_text().strip().splitlines()
            title = lines[0].lstrip("# ").strip()
            for para in "\n".join(lines[1:]).split("\n\n"):
                if para.strip():
                    self.passages.append(Passage(title, " ".join(para.split())))
        assert self.passages, f"no documents in {directory}"
        self.terms = [Counter(_words(p.doc + " " + p.text)) for p in self.passages]
        self.avg_len = sum(sum(t.values()) for t in self.terms) / len(self.terms)
        df = Counter(w for t in self.terms for w in t)
        n = len(self.terms)
        self.idf = {w: math.log(1 + (n - k + 0.5) / (k + 0.5)) for w, k in df.items()}

    def search(self, query: str, k: int = 2) -> list[Passage]:
        words = _words(query)
        scores = []
        for tf in self.terms:
            norm = 1.2 * (0.25 + 0.75 * sum(tf.values()) / self.avg_len)
            scores.append(sum(self.idf[w] * tf[w] * 2.2 / (tf[w] + norm) for w in words if w in tf))
        best = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]  # ties: document order
        return [self.passages[i] for i in best if scores[i] > 0]


@lru_cache(maxsize=1)
def corpus() -> Corpus:
    return Corpus()


def search(query: str, k: int = 2) -> str:
    """The k best passages for `query`, each headed by its document's title."""
    found = corpus().search(query, k)
    if not found:
        return f"No results for {query!r}."
    return "\n".join(f"[{p.doc}] {p.text}" for p in found)


# -- the agent's action line -----------------------------------------------------------------------------------
_ACTION = re.compile(r"Action\s*:\s*(search|calculator)\s*(?:\[(.*?)\]|\((.*?)\)|:\s*(.+))", re.I | re.S)
_ACTION_INPUT = re.compile(r"Action\s*:\s*(search|calculator)\s*\n\s*Action Input\s*:\s*(.+)", re.I)
FINAL_ANSWER = "Final Answer:"


def parse_action(text: str) -> tuple[str, str] | None:
    """(tool, input) of the first action the model wrote, or None. Accepts `Action: search[query]` (the
    format the prompt asks for) and the usual variants: `search(query)`, `search: query`, and an
    `Action Input:` line."""
    m = _ACTION_INPUT.search(text)
    if m:
        return m.group(1).lower(), m.group(2).strip().splitlines()[0].strip("\"' ")
    m = _ACTION.search(text)
    if not m:
        return None
    arg = next(g for g in m.groups()[1:] if g is not None)
    arg = arg.strip().splitlines()[0].strip("\"' ") if arg.strip() else ""
    return m.group(1).lower(), arg


def observe(step_output: str, question: str) -> str:
    """What the agent sees after a step: the tool's result, or — when the step held no valid action — an
    error saying so, followed by search results for the question itself so the loop can still progress."""
    action = parse_action(step_output)
    if action is None or not action[1]:
        return ("Invalid format: no 'Action: search[...]' or 'Action: calculator[...]' line found. "
                "Results for the question:\n" + search(question))[:MAX_OBSERVATION_CHARS]
    tool, arg = action
    result = calculate(arg) if tool == "calculator" else search(arg)
    return result[:MAX_OBSERVATION_CHARS]


def final_answer(text: str) -> str | None:
    """The text after "Final Answer:", if the model wrote one."""
    at = text.find(FINAL_ANSWER)
    return text[at + len(FINAL_ANSWER):].strip() if at >= 0 else None
