"""The tools of the ReAct examples: a calculator and a search over a small local knowledge base.

The knowledge base is the Nimbus Cloud documentation in data/corpus/ (a fictional cloud
provider: prices, regions, quotas, SLA), split into paragraphs and ranked with BM25, as a
retrieval tool in front of a real wiki would do. The calculator evaluates arithmetic only
(an AST walk, never `eval`). `TOOLS` are their OpenAI function schemas, which the model calls
through `tool_calls`; `run_tool` runs one call, returning an error the model can read for a
call it got wrong.
"""

from __future__ import annotations

import ast
import json
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


# -- the tools as the model calls them -------------------------------------------------------------------------
# Arguments are bounded, so a call decoded under its schema always closes within a step's max_tokens (a call
# cut off by max_tokens is no call): about 30 tokens of markup plus at most max_length characters.
CALL_MAX_TOKENS = 160
ARG_MAX_LENGTH, ANSWER_MAX_LENGTH = 60, 200  # characters: a query or expression, the final answer


def _function(name: str, description: str, arg: str, arg_description: str, max_length: int = ARG_MAX_LENGTH) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": {arg: {"type": "string", "description": arg_description,
                                                              "maxLength": max_length}},
                       "required": [arg]}}}


SEARCH = _function("search", "Full-text search over the Nimbus Cloud documentation (pricing pages, regions, quotas, "
                   "SLA, support plans, billing, managed databases, Kubernetes, security). Returns the two most "
                   "relevant paragraphs, each prefixed with the title of its page.",
                   "query", "A few keywords, e.g. 'n1.large price per hour' or 'egress tiers'.")
CALCULATOR = _function("calculator", "Evaluates one arithmetic expression and returns the number. Supports + - * / "
                       "// % **, parentheses and round(x, digits), min, max, abs and sqrt. No variables, no units.",
                       "expression", "For example '3 * 0.168 * 730' or 'round(1.08 * 4.10, 2)'.")
FINAL_ANSWER = _function("final_answer", "Give the customer the final answer and end the conversation.",
                         "answer", "The answer in one to three sentences, with the numbers and their units.", ANSWER_MAX_LENGTH)
TOOLS = (SEARCH, CALCULATOR)  # what the agent can look up or compute; FINAL_ANSWER ends a workflow's loop


def run_tool(name: str, arguments: dict | str) -> str:
    """The result of one tool call (arguments as a dict or its JSON text), cut to MAX_OBSERVATION_CHARS; an
    "Error: ..." the model can read for an unknown tool or missing argument, as a real agent shows it."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return f"Error: the arguments of {name} are not JSON: {arguments[:80]!r}"
    if name == "search" and isinstance(arguments.get("query"), str):
        return search(arguments["query"])[:MAX_OBSERVATION_CHARS]
    if name == "calculator" and isinstance(arguments.get("expression"), str):
        return calculate(arguments["expression"])[:MAX_OBSERVATION_CHARS]
    return f"Error: no tool {name!r} taking {sorted(arguments)}; the tools are {', '.join(TOOL_NAMES)}."
