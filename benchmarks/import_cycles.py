"""Import cycles between vlaforge's packages: walk ``src/vlaforge`` with ``ast``, build the graph of
module-level ``vlaforge.*`` imports (functions' bodies excluded; package = first component under
``vlaforge``: ``train``, ``algos``, ``types``, ...), and print every edge that closes a cycle. Exit 1 if any.
``--functions`` counts imports inside functions too, so a cycle dodged by a function-level import shows.

    .venv/bin/python benchmarks/import_cycles.py              # package level
    .venv/bin/python benchmarks/import_cycles.py --functions  # package level, function-level imports too
    .venv/bin/python benchmarks/import_cycles.py --modules    # module level
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "vlaforge"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(tree: ast.Module, functions: bool = False) -> set[str]:
    out = set()
    for node in tree.body:  # module level only (also inside if/try at module level), unless `functions`
        for n in ast.walk(node) if functions or isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0 and n.module.startswith("vlaforge"):
                out.add(n.module)
                out.update(f"{n.module}.{a.name}" for a in n.names)
            elif isinstance(n, ast.Import):
                out.update(a.name for a in n.names if a.name.startswith("vlaforge"))
    return out


def main(modules: bool, functions: bool = False) -> int:
    mods = {module_name(p): p for p in ROOT.rglob("*.py")}
    key = (lambda m: m) if modules else (lambda m: m.split(".")[1] if m.count(".") else m)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        for imp in top_level_imports(ast.parse(path.read_text()), functions):
            if imp in mods and key(imp) != key(name):
                graph.setdefault(key(name), set()).add(key(imp))
    cycles = []
    state: dict[str, int] = {}

    def dfs(u: str, stack: list[str]):
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v] if v in stack else [u, v])
            elif v not in state:
                dfs(v, stack + [v])
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            dfs(u, [u])
    for c in cycles:
        print("cycle: " + " -> ".join(c))
    print(f"{len(graph)} {'modules' if modules else 'packages'} with imports, {len(cycles)} cycles")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main("--modules" in sys.argv, "--functions" in sys.argv))
