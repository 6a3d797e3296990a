"""Print every import cycle among evo's modules (module-level and function-level imports alike,
as import-linter's grimp sees them); exit 1 if there is one. Run by .ci/run.

    python scripts/import_cycles.py
"""

from __future__ import annotations

import sys

import grimp


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    modules = sorted(m for m in graph.modules if m.split(".")[0] in ("evo", "evo_bench"))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
            if w not in index and w in modules_set:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    modules_set = set(modules)
    sys.setrecursionlimit(10_000)
    for m in modules:
        if m not in index:
            visit(m)
    return found


def main() -> int:
    graph = grimp.build_graph("evo", "evo_bench")
    found = cycles(graph)
    for group in found:
        print("import cycle:", " <-> ".join(group))
    n = len([m for m in graph.modules if m.split(".")[0] in ("evo", "evo_bench")])
    print(f"{n} modules, {len(found)} import cycles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
