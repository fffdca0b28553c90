"""Add import statements to a module's source where ruff's isort rules (I001) expect them.

``gz gen --add-handlers`` appends stub handlers whose type hints may name a module the service
module does not import yet (``AsyncIterator``, a new ``_pb2``). Each missing import joins a
``from X import`` of the same module, or goes into its section (future, standard library, third
party, first party, relative) at its sorted place; nothing else in the file changes.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass

LINE_LENGTH = 100


@dataclass(frozen=True)
class Import:
    """``from module import name [as alias]`` (``level`` dots for a relative one), or, without a
    name, ``import module as alias``."""

    module: str
    name: str = ""
    alias: str = ""
    level: int = 0

    @property
    def bound(self) -> str:
        """The name the statement binds in the module."""
        return self.alias or self.name or self.module.split(".")[0]

    @property
    def text(self) -> str:
        alias = f" as {self.alias}" if self.alias else ""
        if self.name:
            return f"from {'.' * self.level}{self.module} import {self.name}{alias}"
        return f"import {self.module}{alias}"


def add_imports(source: str, wanted: list[Import], first_party: str) -> tuple[str, list[str]]:
    """``source`` with each import of ``wanted`` whose name it does not bind yet; also returns
    the statements added. ``first_party`` is the project's package (its own isort section)."""
    added = []
    for want in wanted:
        tree = ast.parse(source)
        if want.bound in _bound_names(tree):
            continue
        source = _merged(source, tree, want) or _inserted(source, tree, want, first_party)
        added.append(want.text)
    return source, added


def _bound_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
    return names


def _merged(source: str, tree: ast.Module, want: Import) -> str | None:
    """``source`` with ``want.name`` joined to a comment-free ``from`` import of its module."""
    lines = source.splitlines(keepends=True)
    for node in _leading_imports(tree):
        if not (
            isinstance(node, ast.ImportFrom)
            and want.name
            and (node.module or "") == want.module
            and node.level == want.level
            and node.end_lineno is not None
        ):
            continue
        statement = "".join(lines[node.lineno - 1 : node.end_lineno])
        if "#" in statement or "*" in statement or ";" in statement:
            return None  # not ours to rewrite: add a statement of its own instead
        names = [_alias_text(alias) for alias in node.names]
        names.append(f"{want.name} as {want.alias}" if want.alias else want.name)
        names.sort(key=_member_key)
        head = f"from {'.' * node.level}{node.module or ''} import "
        text = head + ", ".join(names)
        if len(text) > LINE_LENGTH or node.end_lineno > node.lineno:  # as ruff wraps it
            text = head + "(\n" + "".join(f"    {name},\n" for name in names) + ")"
        lines[node.lineno - 1 : node.end_lineno] = [text + "\n"]
        return "".join(lines)
    return None


def _inserted(source: str, tree: ast.Module, want: Import, first_party: str) -> str:
    """``source`` with ``want`` as a statement of its own, at its sorted place in its section."""
    lines = source.splitlines(keepends=True)
    section, key = _section(want.module, want.level, first_party), _key(want)
    statements = [
        (_section(_module_of(node), getattr(node, "level", 0), first_party), node)
        for node in _leading_imports(tree)
    ]
    same = [node for s, node in statements if s == section]
    later = [node for node in same if _statement_key(node) > key]
    if later:
        at, text = later[0].lineno - 1, want.text + "\n"
    elif same:
        at, text = _end(same[-1]), want.text + "\n"
    elif before := [node for s, node in statements if s < section]:
        at, text = _end(before[-1]), "\n" + want.text + "\n"  # a new section after its elders
    elif statements:
        at, text = statements[0][1].lineno - 1, want.text + "\n\n"
    elif tree.body and _is_docstring(tree.body[0]):  # no imports at all
        at, text = _end(tree.body[0]), "\n" + want.text + "\n"
    else:
        at, text = 0, want.text + "\n\n"
    lines.insert(at, text)
    return "".join(lines)


def _leading_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements at the top of the module (after its docstring): isort's block."""
    body = tree.body[1:] if tree.body and _is_docstring(tree.body[0]) else tree.body
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if not isinstance(node, ast.Import | ast.ImportFrom):
            break
        found.append(node)
    return found


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)


def _section(module: str, level: int, first_party: str) -> int:
    root = module.split(".")[0]
    if level:
        return 4
    if root == "__future__":
        return 0
    if root in sys.stdlib_module_names:
        return 1
    return 3 if root == first_party else 2


def _module_of(node: ast.Import | ast.ImportFrom) -> str:
    return node.names[0].name if isinstance(node, ast.Import) else node.module or ""


def _key(want: Import) -> tuple[int, int, str]:
    """isort's order in a section: ``import x`` before ``from x import``, the furthest relative
    imports first, then by module name."""
    return (1 if want.name else 0, -want.level, want.module.lower())


def _statement_key(node: ast.Import | ast.ImportFrom) -> tuple[int, int, str]:
    if isinstance(node, ast.Import):
        return (0, 0, node.names[0].name.lower())
    return (1, -node.level, (node.module or "").lower())


def _member_key(name: str) -> tuple[int, str]:
    """isort's order-by-type: CONSTANTS, then Classes, then everything else."""
    bare = name.split(" as ")[0]
    kind = 0 if bare.isupper() and len(bare) > 1 else 1 if bare[:1].isupper() else 2
    return kind, bare.lower()


def _alias_text(alias: ast.alias) -> str:
    return f"{alias.name} as {alias.asname}" if alias.asname else alias.name


def _end(node: ast.stmt) -> int:
    return node.end_lineno or node.lineno
