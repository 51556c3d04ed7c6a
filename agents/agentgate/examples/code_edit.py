"""Code edit: an agent that rewrites a source file, checks it, and reviews its own change.

One conversation, grown a turn at a time, as coding agents work: the file and the task;
the agent's plan (`locate`); the whole edited file (`edit`); the checker's report (`check`,
a tool the client runs: does it parse, what is the diff); a review (`review`); and, when
the review asks for it, a second attempt (`revise`).

    locate → edit → check → review ─(REVISE)→ revise

Two things make this workload special. The outputs copy most of the input back (the
edited file is the original with a few lines changed): n-gram speculative decoding in the
worker accepts long drafts here. And each turn's prompt is the previous turn's prompt plus
its answer, so the whole chain is one growing prefix: every call after the first is a
cache hit on the worker that served the previous one.

    agentgate run agents/agentgate/examples/code_edit.py [--quick] [--input task="..."]
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from pathlib import Path

from agentgate.workflow import Workflow, contains

TEMPLATE = "patchwork-edit"
CODE_DIR = Path(__file__).resolve().parent / "data" / "code"
MAX_DIFF_LINES = 40

SYSTEM = """You are Patchwork, a careful code-editing agent. You receive one Python source file and a \
task, and you change the file to do the task and nothing else. Reviewers read your change as a diff, so \
every line you do not need to change must come back exactly as it was, byte for byte: same names, same \
spacing, same quotes, same comments, same order.

## How you work

You work in turns. In each turn you get one instruction and answer only that instruction:

1. PLAN: list the functions or lines you will change and how, one per line, starting each line with \
"- ". Do not write code in this turn.
2. EDIT: output the complete updated file in a single fenced code block that starts with ```python and \
ends with ```. Output the whole file, not only the changed parts, and nothing after the closing fence.
3. REVIEW: you get the checker's report on your edit. Answer "APPROVE" if the diff does the task and the \
file parses, otherwise "REVISE: " followed by what is wrong.
4. REVISE (only after REVISE): output the complete corrected file again, in the same format as EDIT.

## The checker tool

After your edit the system runs a checker and shows you its report as JSON:

{"name": "check_python", "description": "Parses the edited file and compares it with the original.", \
"returns": {"type": "object", "properties": {"parses": {"type": "boolean", "description": "Whether the \
edited file is valid Python."}, "error": {"type": "string", "description": "The syntax error, if any."}, \
"lines_changed": {"type": "integer", "description": "Lines added plus lines removed."}, "diff": {"type": \
"string", "description": "A unified diff of the change, at most 40 lines."}}}}

## Rules

- Keep the public interface: do not rename, add or remove functions, methods or parameters unless the \
task says so. When the task renames something, rename every use in the file.
- Keep imports at the top. Add an import only if the new code needs it.
- Follow the file's style: its indentation, its quote style, its naming.
- Type hints use the built-in generics (list[str], dict[str, int]) and `X | None`.
- Docstrings are one line, in the imperative mood ("Return the quantity of a SKU.").
- Logging uses a module-level `log = logging.getLogger(__name__)` and %-style arguments.
- Never leave a TODO, never comment out code, never add print calls.
- A change that makes the file fail to parse is always wrong.
"""

TASKS = (
    ("inventory.py", "Add type hints to every method and to the return values."),
    ("ratelimit.py", "Replace the print call with logging, using a module-level logger."),
    ("csv_report.py", "Add a one-line docstring to every function."),
    ("inventory.py", "Rename the method get_qty to quantity_of."),
    ("ratelimit.py", "Add type hints to every method."),
    ("csv_report.py", "Replace the print call with logging, using a module-level logger."),
)


def source(name: str) -> str:
    return (CODE_DIR / name).read_text()


def extract_code(text: str) -> str | None:
    """The body of the last ```python fenced block (or an unterminated one the output ran out in)."""
    blocks = re.findall(r"```(?:python)?\n(.*?)(?:```|\Z)", text, re.S)
    return blocks[-1] if blocks else None


def check_python(original: str, edited_output: str) -> dict:
    """The checker's report on an edit: does it parse, how many lines changed, the diff."""
    code = extract_code(edited_output)
    if code is None:
        return {"parses": False, "error": "no ```python code block in the answer", "lines_changed": 0, "diff": ""}
    try:
        ast.parse(code)
        error = ""
    except SyntaxError as exc:
        error = f"line {exc.lineno}: {exc.msg}"
    diff = list(difflib.unified_diff(original.splitlines(), code.splitlines(), "original", "edited", lineterm="",
                                     n=1))
    changed = sum(1 for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---")))
    return {"parses": not error, "error": error, "lines_changed": changed,
            "diff": "\n".join(diff[:MAX_DIFF_LINES])}


def build(quick: bool = False, variant: int = 0) -> Workflow:
    """Task number `variant` (mod the list) on its file. quick: the smallest file, the edit cut short,
    and no review (locate → edit → check)."""
    name, task = TASKS[variant % len(TASKS)]
    if quick:
        name = "ratelimit.py"
    code = source(name)
    plan_tokens, edit_tokens, review_tokens = (16, 32, 0) if quick else (48, 320, 32)
    wf = Workflow(TEMPLATE, inputs={"task": task})
    opening = f"File `{name}`:\n```python\n{code}```\n\nTask: {{{{inputs.task}}}}\n\nPLAN: list what you will change."
    turns = [("user", opening)]
    locate = wf.llm("locate", messages=turns, system=SYSTEM, max_tokens=plan_tokens)
    turns += [("assistant", str(locate)), ("user", "EDIT: output the complete updated file.")]
    edit = wf.llm("edit", messages=turns, system=SYSTEM, max_tokens=edit_tokens)

    def check(edit: str) -> str:
        return json.dumps(check_python(code, edit))

    wf.external("check", check, after=edit)
    if quick:
        return wf
    turns += [("assistant", str(edit)), ("user", "Checker report:\n{{check}}\n\nREVIEW: approve or revise?")]
    review = wf.llm("review", messages=turns, system=SYSTEM, max_tokens=review_tokens)
    turns += [("assistant", str(review)), ("user", "REVISE: output the complete corrected file.")]
    revise = wf.llm("revise", messages=turns, system=SYSTEM, max_tokens=edit_tokens)
    wf.only_if(review, revise, when=contains("REVISE"))  # it quotes every turn; the review alone decides
    return wf
