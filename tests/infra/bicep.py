"""Read Bicep files with tree-sitter-bicep: syntax problems, declarations and the values they hold.

The Bicep CLI cannot run offline, so the infrastructure tests read the templates through this instead: what
resources, parameters and variables a file declares, and their values as plain Python data where they are
literals. Variables and string interpolations of literals are resolved; anything else (a parameter, a
function call, a ternary) stays an `Expression` holding its source text, so a test can still look at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import tree_sitter_bicep
from tree_sitter import Language, Node, Parser

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"


@dataclass(frozen=True)
class Expression:
    """A value that is not a literal: kept as its Bicep source text."""

    text: str


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: Any
    has_default: bool


@dataclass(frozen=True)
class Declaration:
    """A `resource` or `module`: its symbolic name, what it points at, and its body as Python data."""

    kind: str  # "resource" or "module"
    symbol: str
    target: str  # resource type with API version, or module path
    body: dict[str, Any]
    loop_over: str | None  # source text of the collection of `[for x in COLLECTION: ...]`
    condition: str | None  # source text of `if (CONDITION)`
    existing: bool

    @property
    def type(self) -> str:
        """The resource type without its API version (`Microsoft.Web/sites`)."""
        return self.target.partition("@")[0]


@cache
def _parser() -> Parser:
    return Parser(Language(tree_sitter_bicep.language()))


def parse(source: bytes) -> Node:
    """The root node of `source`'s syntax tree."""
    return _parser().parse(source).root_node


def syntax_problems(source: bytes) -> list[str]:
    """Every ERROR and MISSING node in `source`, as `line:column: what`; empty when the file parses cleanly."""
    problems = []
    for node in _walk(parse(source)):
        if node.is_missing:
            problems.append(f"{_where(node)}: missing {node.type!r}")
        elif node.is_error:
            snippet = source[node.start_byte : node.end_byte].decode(errors="replace")[:60]
            problems.append(f"{_where(node)}: cannot parse {snippet!r}")
    return problems


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for child in node.children:
        yield from _walk(child)


def _where(node: Node) -> str:
    row, column = node.start_point
    return f"{row + 1}:{column + 1}"


class BicepFile:
    """One parsed Bicep file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.source = path.read_bytes()
        self.root = parse(self.source)
        self._variable_nodes = {
            self._name(node): self._value_node(node)
            for node in self.root.children
            if node.type == "variable_declaration"
        }

    @property
    def text(self) -> str:
        return self.source.decode()

    @property
    def target_scope(self) -> str:
        for node in self.root.children:
            if node.type == "target_scope_assignment":
                value = self.value(self._value_node(node))
                return value if isinstance(value, str) else "?"
        return "resourceGroup"

    @property
    def parameters(self) -> dict[str, Parameter]:
        found = {}
        for node in self.root.children:
            if node.type != "parameter_declaration":
                continue
            name = self._name(node)
            kind = next((self._text(child) for child in node.named_children if child.type == "type"), "?")
            after_equals = self._after_equals(node)
            default = None if after_equals is None else self.value(after_equals)
            found[name] = Parameter(name, kind, default, after_equals is not None)
        return found

    @property
    def variables(self) -> dict[str, Any]:
        return {name: self.value(node) for name, node in self._variable_nodes.items()}

    @property
    def outputs(self) -> dict[str, Any]:
        return {
            self._name(node): self.value(self._value_node(node))
            for node in self.root.children
            if node.type == "output_declaration"
        }

    def declarations(self) -> list[Declaration]:
        found = []
        for node in self.root.children:
            if node.type not in {"resource_declaration", "module_declaration"}:
                continue
            target_node = next(child for child in node.named_children if child.type == "string")
            body, loop_over, condition = self._unwrap(self._value_node(node))
            value = self.value(body)
            found.append(
                Declaration(
                    kind=node.type.removesuffix("_declaration"),
                    symbol=self._name(node),
                    target=str(self.value(target_node)),
                    body=value if isinstance(value, dict) else {},
                    loop_over=loop_over,
                    condition=condition,
                    existing=any(child.type == "existing" for child in node.children),
                )
            )
        return found

    def resources(self, resource_type: str) -> list[Declaration]:
        """Resources of `resource_type` (compared case-insensitively, without API version)."""
        return [
            declaration
            for declaration in self.declarations()
            if declaration.kind == "resource" and declaration.type.lower() == resource_type.lower()
        ]

    def modules(self) -> list[Declaration]:
        return [declaration for declaration in self.declarations() if declaration.kind == "module"]

    # --- values ---------------------------------------------------------------------------------------

    def value(self, node: Node, seen: frozenset[str] = frozenset()) -> Any:
        """`node` as Python data: literals, arrays, objects, resolved variables; otherwise an Expression."""
        handlers = {
            "string": self._string,
            "array": self._array,
            "object": self._object,
            "identifier": self._identifier,
            "member_expression": self._member,
            "parenthesized_expression": self._parenthesized,
        }
        if node.type in handlers:
            return handlers[node.type](node, seen)
        if node.type == "number":
            return int(self._text(node))
        if node.type == "boolean":
            return self._text(node) == "true"
        if node.type == "null":
            return None
        return Expression(self._text(node))

    def _string(self, node: Node, seen: frozenset[str]) -> Any:
        parts: list[str] = []
        for child in node.named_children:
            if child.type == "string_content":
                parts.append(self._text(child))
            elif child.type == "escape_sequence":
                parts.append(_unescape(self._text(child)))
            elif child.type == "interpolation":
                inner = self.value(child.named_children[0], seen)
                if not isinstance(inner, str | int) or isinstance(inner, bool):
                    return Expression(self._text(node))
                parts.append(str(inner))
        text = "".join(parts)
        # A multi-line string drops the line break right after its opening quotes.
        return text.removeprefix("\n") if self._text(node).startswith("'''") else text

    def _array(self, node: Node, seen: frozenset[str]) -> list[Any]:
        return [self.value(child, seen) for child in node.named_children if child.type != "comment"]

    def _object(self, node: Node, seen: frozenset[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for prop in node.named_children:
            if prop.type != "object_property":
                continue
            key_node, value_node = (child for child in prop.named_children if child.type != "comment")
            key = self.value(key_node, seen) if key_node.type == "string" else self._text(key_node)
            found[key.text if isinstance(key, Expression) else str(key)] = self.value(value_node, seen)
        return found

    def _identifier(self, node: Node, seen: frozenset[str]) -> Any:
        """A variable holding data resolves to that data; any other name stays a name (`Expression`)."""
        name = self._text(node)
        if name in self._variable_nodes and name not in seen:
            resolved = self.value(self._variable_nodes[name], seen | {name})
            if not isinstance(resolved, Expression):
                return resolved
        return Expression(name)

    def _member(self, node: Node, seen: frozenset[str]) -> Any:
        holder = self.value(node.child_by_field_name("object") or node.named_children[0], seen)
        prop = node.child_by_field_name("property")
        if isinstance(holder, dict) and prop is not None and self._text(prop) in holder:
            return holder[self._text(prop)]
        return Expression(self._text(node))

    def _parenthesized(self, node: Node, seen: frozenset[str]) -> Any:
        return self.value(node.named_children[0], seen)

    # --- tree access --------------------------------------------------------------------------------------

    def _text(self, node: Node) -> str:
        return self.source[node.start_byte : node.end_byte].decode()

    def _name(self, node: Node) -> str:
        return self._text(next(child for child in node.named_children if child.type == "identifier"))

    def _after_equals(self, node: Node) -> Node | None:
        children = node.children
        for index, child in enumerate(children):
            if child.type == "=" and index + 1 < len(children):
                return children[index + 1]
        return None

    def _value_node(self, node: Node) -> Node:
        value = self._after_equals(node)
        if value is None:
            raise ValueError(f"{self.path.name}:{_where(node)}: declaration without a value")
        return value

    def _unwrap(self, node: Node) -> tuple[Node, str | None, str | None]:
        """The object inside `[for x in C: if (X) {...}]`, with the source text of C and of X."""
        loop_over = None
        condition = None
        if node.type == "for_statement":
            tokens = node.children
            after_in = next(index for index, child in enumerate(tokens) if child.type == "in") + 1
            loop_over = self._text(tokens[after_in])
            body = node.child_by_field_name("body")
            node = body if body is not None else node.named_children[-1]
        if node.type == "if_statement":
            condition = self._text(node.named_children[0]).removeprefix("(").removesuffix(")")
            node = node.named_children[-1]
        return node, loop_over, condition


def _unescape(sequence: str) -> str:
    return {"\\'": "'", "\\\\": "\\", "\\n": "\n", "\\r": "\r", "\\t": "\t", "\\$": "$"}.get(sequence, sequence)


def bicep_files() -> list[Path]:
    """Every .bicep file under infra/, sorted."""
    return sorted(INFRA.rglob("*.bicep"))


@cache
def load(relative: str) -> BicepFile:
    """A file under infra/ (e.g. `modules/function.bicep`), parsed once per test process."""
    return BicepFile(INFRA / relative)


def get(value: Any, *path: str) -> Any:
    """Walk nested objects by key; KeyError names the missing step."""
    for step in path:
        if not isinstance(value, dict) or step not in value:
            raise KeyError(f"no {step!r} in {value!r:.200}")
        value = value[step]
    return value
