"""The import graph shows the architecture and keeps it.

Read statically (ast), so the test sees lazy imports inside functions too:
- no import cycle among msgr's own modules;
- the chat client never imports the relay (they share only msgrlib.protocol,
  msgrlib.ratelimit, framing and the utilities);
- the sans-I/O modules import no I/O: not asyncio, socket, ssl, selectors or curses;
- the view model of the chat screen imports no curses.
"""

from __future__ import annotations

import ast
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TOP = ("msgr", "framing", "kdf")
IO_MODULES = {"asyncio", "socket", "ssl", "selectors", "curses", "_curses", "threading",
              "subprocess"}

#: Protocol logic: bytes or frames in, events and frames out. Every module of
#: these packages is sans-I/O, and so are the modules named one by one.
SANS_IO_PACKAGES = ("msgrlib.crypto", "msgrlib.util")
SANS_IO_MODULES = ("framing", "kdf", "msgrlib.errors", "msgrlib.speedups", "msgrlib.protocol",
                   "msgrlib.ratelimit", "msgrlib.relay.rules", "msgrlib.relay.store",
                   "msgrlib.relay.config", "msgrlib.client.core", "msgrlib.client.session",
                   "msgrlib.client.events", "msgrlib.client.outbox", "msgrlib.client.modes",
                   "msgrlib.ui.view")


def own_modules() -> dict[str, str]:
    found = {name: os.path.join(ROOT, f"{name}.py") for name in TOP}
    for folder, _, files in os.walk(os.path.join(ROOT, "msgrlib")):
        for file in files:
            if file.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, file), ROOT)[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = os.path.join(folder, file)
    return found


def imports_of(path: str, name: str, modules: dict[str, str]) -> set[str]:
    """Every module ``name`` imports, own or not, outside ``if TYPE_CHECKING``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(p for p in [*parts, base] if p)
            out.add(base)
            for alias in node.names:  # `from msgrlib.crypto import ratchet` imports a module
                if f"{base}.{alias.name}" in modules:
                    out.add(f"{base}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def graph() -> dict[str, set[str]]:
    modules = own_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def test_no_import_cycle_among_msgrs_modules():
    full = graph()
    own = {name: {m for m in deps if m in full and m != name} for name, deps in full.items()}
    # A package's __init__ importing its own modules is not a cycle of ideas.
    own = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in own.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(own[node]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(own):
        if node not in state:
            visit(node)


def test_the_chat_client_never_imports_the_relay():
    for name, deps in graph().items():
        if name.startswith(("msgrlib.client", "msgrlib.crypto", "msgrlib.ui")):
            relay = sorted(d for d in deps if d.startswith("msgrlib.relay"))
            assert not relay, f"{name} imports {relay}"


def test_sans_io_modules_import_no_io():
    full = graph()
    checked = 0
    for name, deps in full.items():
        if name in SANS_IO_MODULES or name.startswith(tuple(p + "." for p in SANS_IO_PACKAGES)):
            io = sorted(d for d in deps if d.split(".")[0] in IO_MODULES)
            assert not io, f"{name} is sans-I/O but imports {io}"
            checked += 1
    assert checked >= 12, checked


def test_nothing_outside_the_package_is_imported_as_a_top_level_module():
    """msgr's code imports its own modules as msgrlib.x, never by a bare generic name."""
    full = graph()
    stray = {"errors", "client", "server", "relay", "store", "names", "ui", "screen", "chat",
             "certs", "e2e", "cpace", "handshake", "ratchet", "tlsconn", "safetext", "logfmt"}
    for name, deps in full.items():
        assert not deps & stray, f"{name} imports {sorted(deps & stray)}"
