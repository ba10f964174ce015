"""The package's import graph has no cycles (function-level imports included), and cli.py only parses and dispatches."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "medpt"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """medpt module -> the medpt modules it imports anywhere in its body."""
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name and target != "medpt":
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_among_medpt_modules():
    assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()) or [])


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_the_cli():
    users = [m for m, deps in import_graph().items() if "medpt.cli" in deps and m != "medpt.__main__"]
    assert users == []


# --- layering: a command module is imported by the CLI only --------------------------------------------------------
def command_modules() -> set[str]:
    """The modules the command record names as entry points (and --dry_run printers)."""
    from medpt.args.commands import COMMANDS

    targets = [c.entry for c in COMMANDS.values()] + [c.dry_run for c in COMMANDS.values() if c.dry_run]
    return {target.split(":")[0] for target in targets}


# `medpt demo` is the whole workflow, one command after another: it is the one command that runs others (as a user
# would), so it may import their command modules. Nothing imports the demo but the CLI.
COMPOSERS = {"medpt.cli", "medpt.demo"}


def test_the_command_modules_are_modules_of_the_package():
    graph = import_graph()
    assert command_modules() <= set(graph)


def test_no_library_module_imports_a_command_module():
    commands = command_modules()
    users = {m: sorted(deps & commands) for m, deps in import_graph().items() if deps & commands and m not in COMPOSERS}
    assert users == {}


def test_the_layering_check_finds_a_planted_import(tmp_path):
    graph = import_graph()
    graph["medpt.train.trainer"].add("medpt.eval.command")
    commands = command_modules()
    assert {m for m, deps in graph.items() if deps & commands and m not in COMPOSERS} == {"medpt.train.trainer"}


def test_every_module_outside_the_plumbing_lives_in_a_command_family_package():
    top = {m for m in import_graph() if m.count(".") == 1 and not (SRC / m.split(".")[1]).is_dir()}
    assert top == {f"medpt.{name}" for name in TOP_LEVEL}


# The top level holds the CLI, the demo and the plumbing every family uses: errors, the crash-safe writer (atomic,
# faults: its fault-injection hook, strictjson: the one JSON writer), the run directory and the bundled samples.
TOP_LEVEL = ("__main__", "cli", "demo", "errors", "atomic", "faults", "strictjson", "rundir", "samples")
