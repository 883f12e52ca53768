"""A safe parser for Boolean update rules (``and / or / not``, parentheses), compiled to truth tables.

Rule text is never evaluated as Python: it is tokenised, parsed by a small recursive-descent parser
into a tree of tuples, and that tree is evaluated by :func:`evaluate` on boolean arrays (numpy or
torch), which only knows the operators ``~ & |``.

Grammar (keywords case-insensitive; ``&``, ``|``, ``!``, ``~`` are accepted as synonyms)::

    expr  := term ("or" term)*
    term  := factor ("and" factor)*
    factor:= "not" factor | atom
    atom  := NAME | "0" | "1" | "true" | "false" | "(" expr ")"
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..base.errors import CellgymError

__all__ = ["RuleSyntaxError", "evaluate", "names_in", "parse_rule", "truth_table"]

_TOKEN = re.compile(r"\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<op>&&?|\|\|?|!|~)|(?P<name>[A-Za-z0-9_.:\-]+))")
_KEYWORDS = {"and": "and", "or": "or", "not": "not", "&": "and", "&&": "and", "|": "or", "||": "or", "!": "not", "~": "not"}
_CONSTANTS = {"0": False, "1": True, "false": False, "true": True}

Node = tuple[Any, ...]  # ("var", name) | ("const", bool) | ("not", node) | ("and"|"or", [nodes])


class RuleSyntaxError(CellgymError, ValueError):
    """A Boolean rule could not be parsed."""


def _tokenise(text: str, where: str) -> list[tuple[str, str, int]]:
    tokens: list[tuple[str, str, int]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise RuleSyntaxError(
                f"{where}: unexpected character {text[pos:].lstrip()[:1]!r} at column {pos + 1} of rule {text!r}; "
                "rules may use gene names, and/or/not, 0/1 and parentheses."
            )
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "op" or (kind == "name" and value.lower() in _KEYWORDS):
            kind, value = "op", _KEYWORDS[value.lower()]
        tokens.append((kind, value, m.start(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str, where: str) -> None:
        self.text, self.where = text, where
        self.tokens = _tokenise(text, where)
        self.i = 0

    def error(self, expected: str) -> RuleSyntaxError:
        if self.i < len(self.tokens):
            got = f"{self.tokens[self.i][1]!r} at column {self.tokens[self.i][2] + 1}"
        else:
            got = "the end of the rule"
        return RuleSyntaxError(f"{self.where}: expected {expected}, got {got} in rule {self.text!r}.")

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def accept(self, kind: str, value: str | None = None) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == kind and (value is None or tok[1] == value):
            self.i += 1
            return True
        return False

    def parse(self) -> Node:
        if not self.tokens:
            raise RuleSyntaxError(f"{self.where}: the rule is empty; write an expression such as 'A and not B'.")
        node = self.expr()
        if self.i != len(self.tokens):
            raise self.error("'and', 'or' or the end of the rule")
        return node

    def expr(self) -> Node:
        terms = [self.term()]
        while self.accept("op", "or"):
            terms.append(self.term())
        return terms[0] if len(terms) == 1 else ("or", terms)

    def term(self) -> Node:
        factors = [self.factor()]
        while self.accept("op", "and"):
            factors.append(self.factor())
        return factors[0] if len(factors) == 1 else ("and", factors)

    def factor(self) -> Node:
        if self.accept("op", "not"):
            return ("not", self.factor())
        return self.atom()

    def atom(self) -> Node:
        tok = self.peek()
        if self.accept("lp"):
            node = self.expr()
            if not self.accept("rp"):
                raise self.error("')'")
            return node
        if tok is not None and tok[0] == "name":
            self.i += 1
            if tok[1].lower() in _CONSTANTS:
                return ("const", _CONSTANTS[tok[1].lower()])
            return ("var", tok[1])
        raise self.error("a gene name, 0/1, 'not' or '('")


def parse_rule(text: str, where: str = "rule") -> Node:
    """Parse one rule into a tree; raises :class:`RuleSyntaxError` naming ``where`` and the column."""
    return _Parser(text, where).parse()


def names_in(node: Node) -> list[str]:
    """Variable names in ``node``, in order of first appearance."""
    out: list[str] = []

    def walk(n: Node) -> None:
        if n[0] == "var":
            if n[1] not in out:
                out.append(n[1])
        elif n[0] == "not":
            walk(n[1])
        elif n[0] in ("and", "or"):
            for c in n[1]:
                walk(c)

    walk(node)
    return out


def evaluate(node: Node, env: dict[str, Any], like: Any) -> Any:
    """Evaluate ``node`` on boolean arrays: ``env`` maps names to arrays shaped like ``like`` (bool)."""
    op = node[0]
    if op == "var":
        return env[node[1]]
    if op == "const":
        return like | True if node[1] else like & False
    if op == "not":
        return ~evaluate(node[1], env, like)
    parts = [evaluate(c, env, like) for c in node[1]]
    out = parts[0]
    for p in parts[1:]:
        out = (out & p) if op == "and" else (out | p)
    return out


def truth_table(node: Node, regulators: list[str]) -> np.ndarray:
    """Output of ``node`` for every input combination: bool array (2**k,), row r has regulator j = bit j of r."""
    k = len(regulators)
    rows = np.arange(2**k)
    env = {name: ((rows >> j) & 1).astype(bool) for j, name in enumerate(regulators)}
    return np.asarray(evaluate(node, env, np.zeros(2**k, dtype=bool)), dtype=bool).reshape(2**k)
