"""Imports flow one way: agentgate (the SDK, in agents/) → gateway → engine (docs/architecture.md §1,
"What may import what").

Every module of the three packages is parsed (not imported), so a lazy import
inside a function counts as much as one at the top of the file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

# import name -> its folder (the SDK's folder agents/ holds the package agentgate)
PACKAGES = {"engine": REPO_ROOT / "engine", "gateway": REPO_ROOT / "gateway", "agentgate": REPO_ROOT / "agents" / "agentgate"}
# What each package must never import.
FORBIDDEN = {"engine": {"gateway", "agentgate"}, "gateway": {"agentgate"}, "agentgate": set()}


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


def _sources(package: str) -> list[Path]:
    return sorted(PACKAGES[package].rglob("*.py"))


def test_every_package_has_python_files():
    counts = {pkg: len(_sources(pkg)) for pkg in PACKAGES}
    assert all(n > 0 for n in counts.values()), counts
    # engine is the bulk of the code: if the walk found only a handful, it is broken.
    assert counts["engine"] >= 20, counts


@pytest.mark.parametrize("package", list(PACKAGES))
def test_imports_flow_one_way(package):
    violations = []
    for path in _sources(package):
        module = _module_name(path)
        package_name = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name in imported_modules(path.read_text(), package_name):
            if name.split(".")[0] in FORBIDDEN[package]:
                violations.append(f"{path.relative_to(REPO_ROOT)} imports {name}")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_lazy_relative_and_dynamic_imports():
    # The parser above is code too: it must catch the forms it guards against.
    source = ("def f():\n    import gateway.router\n"
              "from ...agentgate import cli\n"
              "x = __import__('gateway')\n")
    names = imported_modules(source, "engine.kvcache")
    assert {"gateway.router", "agentgate", "agentgate.cli", "gateway"} <= names
    assert imported_modules("from . import radix\n", "engine.kvcache") == {"engine.kvcache",
                                                                           "engine.kvcache.radix"}
