"""The import graph, read from the source (every import, also those inside functions): no module imports itself
back through others, and stages never import the orchestration that drives them. `import deltalearn` is light."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "deltalearn"
# Drivers that run stages; they may import stages and each other downwards, never the reverse.
ORCHESTRATION = {"deltalearn", "deltalearn.runner", "deltalearn.pipeline", "deltalearn.sweep", "deltalearn.plan",
                 "deltalearn.api", "deltalearn.cli", "deltalearn.experiments.sections", "deltalearn.lab.experiments",
                 "deltalearn.lab.corrupt",
                 "deltalearn.lab.cli", "deltalearn.configdoc", "deltalearn.reference"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            deps |= {t for t in targets if t in modules and t not in (name, "deltalearn")}
        graph[name] = deps
    return graph


def find_cycle(graph):
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(n):
        state[n] = 1
        path.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state and (c := visit(d)):
                return c
        state[n] = 2
        path.pop()
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycles():
    graph = import_graph()
    assert "deltalearn.train" in graph and len(graph) > 30  # the walk sees the package
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_stages_never_import_orchestration():
    graph = import_graph()
    assert ORCHESTRATION <= graph.keys()
    bad = {m: sorted(deps & ORCHESTRATION) for m, deps in graph.items() if m not in ORCHESTRATION
           and deps & ORCHESTRATION}
    assert not bad, bad


def test_cycle_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_import_deltalearn_is_light_and_exposes_the_api():
    code = ("import sys, deltalearn as dl\n"
            "heavy = [m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "import deltalearn.train, deltalearn.generate, deltalearn.evaluate\n"  # submodules share the names
            "assert all(callable(getattr(dl, f)) for f in ('generate', 'make_pairs', 'train', 'evaluate', 'run'))\n"
            "assert dl.train.__module__ == 'deltalearn.api' and dl.generate.__doc__\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
