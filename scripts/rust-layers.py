#!/usr/bin/env python3
"""Checks that runtime/src imports one way: prints each module's imports and any cycle; exit 1 on a cycle.

A module is a file under runtime/src (python/asgi/http.rs is `python::asgi::http`; a folder's mod.rs is the
folder; lib.rs is the crate root). An import is any path naming another module: `crate::a::b`, `super::x`,
`self::y`, in `use` lines and in code. A parent depends on the submodules it declares, so a child that
imports from its parent closes a cycle; and a folder is one layer seen from outside (`python::asgi`
imports what its files import), so two folders cannot import each other file by file either.

Usage: scripts/rust-layers.py [--graph]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "runtime" / "src"
PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
GROUP = re.compile(r"\b(crate|super|self)((?:::[a-z_][a-z0-9_]*)*)::\{([^{}]*)\}")


def module_of(file: Path) -> tuple[str, ...]:
    parts = list(file.relative_to(SRC).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def strip_comments(text: str) -> str:
    text = re.sub(r"(?m)//.*$", "", text)
    # `pub(in crate::x)` names a module but imports nothing.
    text = re.sub(r"pub\(in [^)]*\)", "pub", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def shown(module: tuple[str, ...]) -> str:
    return "::".join(module) or "crate"


def main() -> int:
    modules = {module_of(f): f for f in SRC.rglob("*.rs")}
    imports: dict[tuple[str, ...], set[tuple[str, ...]]] = {m: set() for m in modules}
    for module, file in modules.items():
        text = strip_comments(file.read_text())
        paths = PATH.findall(text)
        # `use super::{a, b::c}`: each item is a path of its own.
        for root, prefix, group in GROUP.findall(text):
            for item in group.split(","):
                item = item.strip().split(" as ")[0]
                if re.match(r"[A-Za-z_]", item):
                    paths.append((root, f"{prefix}::{item}"))
        for root, rest in paths:
            names = rest.strip(":").split("::")
            if root == "crate":
                target: tuple[str, ...] = ()
            elif root == "super":
                target = module[:-1]
                while names and names[0] == "super":
                    names.pop(0)
                    target = target[:-1]
            else:
                target = module
            # The longest prefix of the path that is a module.
            for name in names:
                if (*target, name) in modules:
                    target = (*target, name)
                else:
                    break
            if target[: len(module)] != module:
                imports[module].add(target)
    # A module declares its submodules (`mod x;`): the parent depends on each child, so a child that
    # imports from its parent (or an ancestor) closes a cycle.
    for module in modules:
        if module:
            imports[module[:-1]].add(module)
    # Seen from outside, a folder is one layer: it imports what its files import (outside itself).
    layers: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
    for module, targets in imports.items():
        for target in targets:
            for depth in range(1, len(module) + 1):
                owner = module[:depth]
                if target[:depth] != owner:
                    layers.setdefault(owner, set()).add(target)
    graph = {m: set() for m in modules}
    for module in modules:
        for target in imports[module] | layers.get(module, set()):
            # A file's own imports, and for a folder also its files' imports from outside it.
            graph[module].add(target)
    cycles = find_cycles(graph)
    if "--graph" in sys.argv:
        for module in sorted(graph):
            names = ", ".join(sorted(shown(t) for t in graph[module]))
            print(f"{shown(module)} -> {names}")
    for cycle in cycles:
        print("cycle:", ", ".join(shown(m) for m in cycle))
    if not cycles:
        print(f"no import cycle among the {len(modules)} modules of runtime/src")
    return 1 if cycles else 0


def find_cycles(graph: dict[tuple[str, ...], set[tuple[str, ...]]]) -> list[list[tuple[str, ...]]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[tuple[str, ...], int] = {}
    low: dict[tuple[str, ...], int] = {}
    stack: list[tuple[str, ...]] = []
    on_stack: set[tuple[str, ...]] = set()
    components: list[list[tuple[str, ...]]] = []

    def visit(node: tuple[str, ...]) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


if __name__ == "__main__":
    sys.exit(main())
