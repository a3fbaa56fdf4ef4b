"""A small view of PowerShell syntax trees (tree-sitter grammar) for the guest-script checks.

PowerShell cannot run here, so the tests read the scripts' syntax: commands and their arguments, string
literals, hashtable literals, assignments, functions and the param() block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import tree_sitter_powershell
from tree_sitter import Language, Node, Parser, Tree


@cache
def _parser() -> Parser:
    return Parser(Language(tree_sitter_powershell.language()))


def parse(source: str) -> Tree:
    return _parser().parse(source.encode("utf-8"))


def text(node: Node) -> str:
    return (node.text or b"").decode("utf-8")


def walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from walk(child)


def syntax_problems(tree: Tree) -> list[str]:
    """Every ERROR and MISSING node, with its position: a script must have none."""
    return [
        f"{'MISSING' if node.is_missing else 'ERROR'} at line {node.start_point[0] + 1}: {text(node)[:60]!r}"
        for node in walk(tree.root_node)
        if node.type == "ERROR" or node.is_missing
    ]


def ancestors(node: Node) -> Iterator[Node]:
    parent = node.parent
    while parent is not None:
        yield parent
        parent = parent.parent


def string_value(node: Node) -> str:
    """The content of a string literal node, without its quotes (variables are not expanded)."""
    raw = text(node)
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        inner = raw[1:-1]
        return inner.replace("''", "'") if raw[0] == "'" else inner
    return raw


def is_comment(node: Node) -> bool:
    return node.type == "comment"


def code_text(tree: Tree) -> str:
    """The source with every comment blanked out (help text may name what the code must never do)."""
    source = bytearray(tree.root_node.text or b"")
    for node in walk(tree.root_node):
        if is_comment(node):
            source[node.start_byte : node.end_byte] = b" " * (node.end_byte - node.start_byte)
    return source.decode("utf-8")


@dataclass(frozen=True)
class Command:
    """One command invocation: its name and the text of each argument (strings unquoted)."""

    name: str
    args: tuple[str, ...]
    node: Node

    @property
    def lowered(self) -> str:
        return self.name.lower()

    def value_of(self, parameter: str) -> str | None:
        """The argument following `-parameter` (case-insensitive), or None."""
        wanted = "-" + parameter.lower()
        for i, arg in enumerate(self.args[:-1]):
            if arg.lower() == wanted:
                return self.args[i + 1]
        return None


def _argument_text(node: Node) -> str:
    literals = [n for n in walk(node) if n.type == "string_literal"]
    if len(literals) == 1 and text(literals[0]) == text(node).strip():
        return string_value(literals[0])
    return text(node).strip()


def commands(tree: Tree) -> list[Command]:
    found = []
    for node in walk(tree.root_node):
        if node.type != "command":
            continue
        name_node = next((n for n in walk(node) if n.type == "command_name"), None)
        elements = next((c for c in node.children if c.type == "command_elements"), None)
        args: list[str] = []
        if elements is not None:
            args = [_argument_text(c) for c in elements.children if c.type != "command_argument_sep"]
        found.append(Command(text(name_node) if name_node else "", tuple(args), node))
    return found


def strings(tree: Tree) -> list[tuple[str, Node]]:
    """Every string literal's content, with its node."""
    return [(string_value(n), n) for n in walk(tree.root_node) if n.type == "string_literal"]


def functions(tree: Tree) -> dict[str, str]:
    """Function name -> its whole definition text."""
    result = {}
    for node in walk(tree.root_node):
        if node.type == "function_statement":
            name = next(c for c in node.children if c.type == "function_name")
            result[text(name)] = text(node)
    return result


@dataclass(frozen=True)
class HashLiteral:
    ordered: bool
    keys: tuple[str, ...]
    node: Node

    def value_literal(self, key: str) -> HashLiteral | None:
        """The hashtable literal assigned to `key` inside this one, if its value is a literal."""
        for entry in _entries(self.node):
            key_node = next(c for c in entry.children if c.type == "key_expression")
            if _key_text(key_node) != key:
                continue
            value = next(c for c in entry.children if c.type == "pipeline")
            nested = next((n for n in walk(value) if n.type == "hash_literal_expression"), None)
            return _hash_literal(nested) if nested is not None else None
        return None


def _entries(node: Node) -> list[Node]:
    body = next((c for c in node.children if c.type == "hash_literal_body"), None)
    return [c for c in body.children if c.type == "hash_entry"] if body is not None else []


def _key_text(key_node: Node) -> str:
    literal = next((n for n in walk(key_node) if n.type == "string_literal"), None)
    return string_value(literal) if literal is not None else text(key_node)


def _hash_literal(node: Node) -> HashLiteral:
    cast = next((a for a in ancestors(node) if a.type == "cast_expression"), None)
    ordered = cast is not None and text(cast).lower().startswith("[ordered]") and node.parent in cast.children
    keys = tuple(_key_text(next(c for c in entry.children if c.type == "key_expression")) for entry in _entries(node))
    return HashLiteral(ordered, keys, node)


def hash_literals(tree: Tree) -> list[HashLiteral]:
    return [_hash_literal(n) for n in walk(tree.root_node) if n.type == "hash_literal_expression"]


@dataclass(frozen=True)
class Assignment:
    target: str  # the left side as written, e.g. "$summary" or "$findings.removed"
    value: Node
    target_node: Node


def assignments(tree: Tree) -> list[Assignment]:
    found = []
    for node in walk(tree.root_node):
        if node.type == "assignment_expression":
            left = next(c for c in node.children if c.type == "left_assignment_expression")
            value = node.children[-1]
            found.append(Assignment(text(left).strip(), value, left))
    return found


def assigned_members(tree: Tree) -> list[tuple[str, str]]:
    """(object, member) for every `$x.member = ...` and `$x['member'] = ...` with a literal member name."""
    found = []
    for assignment in assignments(tree):
        for node in walk(assignment.target_node):
            if node.type == "member_access":
                member = next(c for c in node.children if c.type == "member_name")
                found.append((text(node.children[0]), text(member)))
                break
            if node.type == "element_access":
                literal = next((n for n in walk(node) if n.type == "string_literal"), None)
                if literal is not None:
                    found.append((text(node.children[0]), string_value(literal)))
                break
    return found


@dataclass(frozen=True)
class ScriptParameter:
    name: str
    type: str  # "string", "int", ...
    validate_set: tuple[str, ...]
    validate_range: tuple[int, int] | None
    default: str | None
    validate_pattern: str | None = None


def script_parameters(tree: Tree) -> list[ScriptParameter]:
    """The top-level param() block's parameters."""
    block = next((c for c in tree.root_node.children if c.type == "param_block"), None)
    if block is None:
        return []
    return [_script_parameter(node) for node in walk(block) if node.type == "script_parameter"]


_LITERALS = ("string_literal", "decimal_integer_literal")


def _literal(node: Node) -> str:
    return string_value(node) if node.type == "string_literal" else text(node)


def _script_parameter(node: Node) -> ScriptParameter:
    name = text(next(c for c in node.children if c.type == "variable")).lstrip("$")
    type_name = ""
    choices: tuple[str, ...] = ()
    bounds: tuple[int, int] | None = None
    pattern: str | None = None
    for attribute in (n for n in walk(node) if n.type == "attribute"):
        literal = next((c for c in attribute.children if c.type == "type_literal"), None)
        if literal is not None:
            type_name = text(literal).strip("[]").lower()
            continue
        attribute_name = text(next(c for c in attribute.children if c.type == "attribute_name")).lower()
        values = [_literal(n) for n in walk(attribute) if n.type in _LITERALS]
        if attribute_name == "validateset":
            choices = tuple(values)
        elif attribute_name == "validaterange":
            bounds = (int(values[0]), int(values[1]))
        elif attribute_name == "validatepattern":
            pattern = values[0]
    default_node = next((c for c in node.children if c.type == "script_parameter_default"), None)
    default_literal = next((n for n in walk(default_node) if n.type in _LITERALS), None) if default_node else None
    default = _literal(default_literal) if default_literal is not None else None
    return ScriptParameter(name, type_name, choices, bounds, default, pattern)
