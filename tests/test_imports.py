"""Imports flow one way, as docs/architecture.md §1 "What may import what" declares: between packages
agentgate (the SDK, in agents/) → gateway → common ← engine, and inside each package from a layer to
the layers below it. The declaration is read from the ```layers block of that file, so the document
and this test cannot drift apart.

Every module is parsed (not imported), so a lazy import inside a function counts as much as one at
the top of the file. A node is a package's first-level subfolder or top-level module (the package's
own __init__ may import its nodes).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx
import pytest

from tests.support import REPO_ROOT

# import name -> its folder (the SDK's folder agents/ holds the package agentgate)
PACKAGES = {"common": REPO_ROOT / "common", "engine": REPO_ROOT / "engine", "gateway": REPO_ROOT / "gateway",
            "agentgate": REPO_ROOT / "agents" / "agentgate"}
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"


def _module_name(path: Path) -> str:
    root = REPO_ROOT / "agents" if path.is_relative_to(REPO_ROOT / "agents") else REPO_ROOT
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute names of every module a file of `package` imports, relative imports resolved."""
    tree = ast.parse(source)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            # `from engine import worker` imports engine.worker too.
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                "__import__", "import_module") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return {n for n in names if n}


def node_of(module: str) -> str | None:
    """`gateway.router.base` -> "gateway/router"; `engine.config` -> "engine/config.py"; a package itself
    -> its name; a module of no package here -> None."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    if len(parts) == 1:
        return parts[0]
    base = PACKAGES[parts[0]]
    if (base / parts[1]).is_dir():
        return f"{parts[0]}/{parts[1]}"
    if (base / f"{parts[1]}.py").exists():
        return f"{parts[0]}/{parts[1]}.py"
    return parts[0]


def read_layers(text: str) -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, int]]:
    """From the ```layers block: (packages each package may import, extra nodes a node may import,
    each node's layer number, 0 at the top)."""
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, f"{ARCHITECTURE} has no ```layers block"
    allowed, extra, layer = {}, {}, {}
    for line in block.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        head, _, rest = line.partition(":")
        if head.startswith("package "):
            allowed[head.removeprefix("package ").strip()] = set(rest.split())
        elif head.startswith("also "):
            extra[head.removeprefix("also ").strip()] = set(rest.split())
        elif head.startswith("layers "):
            package = head.removeprefix("layers ").strip()
            for depth, group in enumerate(rest.split(">")):
                for name in group.split():
                    layer[f"{package}/{name}"] = depth
    return allowed, extra, layer


def import_edges(sources: dict[Path, str]) -> list[tuple[str, str, str]]:
    """(from node, to node, why) for every import between different nodes of the packages."""
    edges = []
    for path, source in sources.items():
        module = _module_name(path)
        package_name = module if path.name == "__init__.py" else module.rpartition(".")[0]
        src = node_of(module)
        for name in imported_modules(source, package_name):
            dst = node_of(name)
            if dst is not None and dst != src:
                edges.append((src, dst, f"{path.relative_to(REPO_ROOT)} imports {name}"))
    return edges


def violations(sources: dict[Path, str], declared: str) -> list[str]:
    allowed, extra, layer = read_layers(declared)
    out = []
    for src, dst, why in import_edges(sources):
        src_pkg, dst_pkg = src.split("/")[0], dst.split("/")[0]
        if dst in extra.get(src, ()) or any(dst.startswith(e + "/") for e in extra.get(src, ())):
            continue
        if src_pkg != dst_pkg:
            if dst_pkg not in allowed.get(src_pkg, set()):
                out.append(f"{why}: {src_pkg} may not import {dst_pkg}")
            continue
        if src_pkg in (src, dst):
            continue  # a package's __init__ re-exports its own nodes (`from agentgate import transport`)
        if src not in layer or dst not in layer:
            out.append(f"{why}: {src if src not in layer else dst} is in no layer of {ARCHITECTURE.name}")
        elif layer[dst] <= layer[src]:
            out.append(f"{why}: {src} (layer {layer[src]}) may import only layers below it, "
                       f"not {dst} (layer {layer[dst]})")
    # a package's __init__ and what it re-exports are no layer's business (the package rule covers them)
    graph = nx.DiGraph((s, d) for s, d, _ in import_edges(sources) if s not in PACKAGES and d not in PACKAGES)
    for cycle in nx.simple_cycles(graph):
        out.append("import cycle: " + " -> ".join(cycle + cycle[:1]))
    return out


def tree_sources() -> dict[Path, str]:
    return {p: p.read_text() for base in PACKAGES.values() for p in sorted(base.rglob("*.py"))}


def test_every_package_has_python_files():
    counts = {pkg: sum(1 for p in tree_sources() if p.is_relative_to(base)) for pkg, base in PACKAGES.items()}
    assert all(n > 0 for n in counts.values()), counts
    # engine is the bulk of the code: if the walk found only a handful, it is broken.
    assert counts["engine"] >= 20, counts


def test_imports_follow_the_declared_layers():
    assert violations(tree_sources(), ARCHITECTURE.read_text()) == []


def test_every_node_has_a_layer():
    _, _, layer = read_layers(ARCHITECTURE.read_text())
    nodes = {node_of(_module_name(p)) for p in tree_sources()} - set(PACKAGES)
    assert sorted(nodes - set(layer)) == []
    assert sorted(set(layer) - nodes) == []  # and the document names no node that is gone


@pytest.mark.parametrize("path, source, expected", [
    # upward inside a package: workers sit below the scheduler
    ("gateway/workers/bad.py", "from gateway.scheduler.scheduler import Scheduler\n",
     "gateway/workers (layer 8) may import only layers below it, not gateway/scheduler"),
    # sideways counts as well: two nodes of one layer never import each other
    ("engine/model/bad.py", "import engine.sglang.args\n", "may import only layers below it, not engine/sglang"),
    # across packages: the shared layer imports neither side, the gateway never reaches into the engine
    ("common/bad.py", "from engine.runtime.engine import Engine\n", "common may not import engine"),
    ("gateway/router/bad.py", "def f():\n    from engine import request\n", "gateway may not import engine"),
    ("agents/agentgate/bad.py", "from gateway.scheduler import scheduler\n", "agentgate may not import gateway"),
])
def test_a_bad_import_fails_the_check(path, source, expected):
    sources = {**tree_sources(), REPO_ROOT / path: source}
    found = violations(sources, ARCHITECTURE.read_text())
    assert len(found) >= 1 and any(expected in v and path in v for v in found), found


def test_a_cycle_fails_the_check():
    # two nodes of one layer that import each other: each is sideways, and together they are a cycle
    sources = {**tree_sources(), REPO_ROOT / "gateway/kvindex/bad.py": "import gateway.state.store\n",
               REPO_ROOT / "gateway/state/bad.py": "import gateway.kvindex.index\n"}
    found = violations(sources, ARCHITECTURE.read_text())
    assert any(v.startswith("import cycle:") and "gateway/kvindex" in v and "gateway/state" in v for v in found), found


def test_the_checker_sees_lazy_relative_and_dynamic_imports():
    # The parser above is code too: it must catch the forms it guards against.
    source = ("def f():\n    import gateway.router\n"
              "from ...agentgate import cli\n"
              "x = __import__('gateway')\n")
    names = imported_modules(source, "engine.kvcache")
    assert {"gateway.router", "agentgate", "agentgate.cli", "gateway"} <= names
    assert imported_modules("from . import radix\n", "engine.kvcache") == {"engine.kvcache",
                                                                           "engine.kvcache.radix"}
