"""Parser for the filter language.

Grammar (keywords are case-insensitive)::

    expr       := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := unary ("and" unary)*
    unary      := "not" unary | "(" expr ")" | predicate
    predicate  := field op literal
                | field ["not"] "in" "(" literal ("," literal)* ")"
                | field ["not"] "like" string
                | field ["not"] "exists"
    field      := segment ("." segment)*
    segment    := name | "`" any characters, "``" for a backtick "`"
    op         := "=" | "==" | "!=" | "<>" | "<" | "<=" | ">" | ">="
    literal    := string | number | "true" | "false" | "nan" | "inf" | "-inf"

Strings take single or double quotes with backslash escapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from mltrail.errors import QuerySyntaxError
from mltrail.query.ast import And, Compare, Exists, Expr, In, Like, Literal, Not, Or

KEYWORDS = {"and", "or", "not", "in", "like", "exists", "true", "false", "nan", "inf"}
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_OPERATORS = ("<=", ">=", "!=", "<>", "==", "=", "<", ">")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\x00", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True)
class Token:
    kind: str  # name, quoted, string, number, op, lparen, rparen, comma, dot, end
    text: str
    value: object
    position: int


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
            continue
        start = position
        if char in "()":
            kind = "lparen" if char == "(" else "rparen"
            tokens.append(Token(kind, char, char, start))
            position += 1
        elif char == ",":
            tokens.append(Token("comma", char, char, start))
            position += 1
        elif char == ".":
            number = _NUMBER_RE.match(text, position)
            if number and (not tokens or tokens[-1].kind == "op"):
                tokens.append(_number_token(number.group(), start))
                position = number.end()
            else:
                tokens.append(Token("dot", char, char, start))
                position += 1
        elif char == "`":
            value, position = _read_quoted_key(text, position)
            tokens.append(Token("quoted", text[start:position], value, start))
        elif char in "'\"":
            value, position = _read_string(text, position)
            tokens.append(Token("string", text[start:position], value, start))
        elif char in "<>=!":
            for op in _OPERATORS:
                if text.startswith(op, position):
                    normal = {"==": "=", "<>": "!="}.get(op, op)
                    tokens.append(Token("op", op, normal, start))
                    position += len(op)
                    break
            else:
                raise QuerySyntaxError(f"unexpected character {char!r}", text, position)
        elif char.isdigit() or char in "+-":
            number = _NUMBER_RE.match(text, position)
            if number:
                tokens.append(_number_token(number.group(), start))
                position = number.end()
            elif text[position:position + 4].lower() == "-inf":
                tokens.append(Token("number", "-inf", float("-inf"), start))
                position += 4
            else:
                raise QuerySyntaxError(f"unexpected character {char!r}", text, position)
        else:
            name = _NAME_RE.match(text, position)
            if not name:
                raise QuerySyntaxError(f"unexpected character {char!r}", text, position)
            tokens.append(Token("name", name.group(), name.group(), start))
            position = name.end()
    tokens.append(Token("end", "", None, len(text)))
    return tokens


def _number_token(text: str, position: int) -> Token:
    is_float = any(c in text for c in ".eE")
    return Token("number", text, float(text) if is_float else int(text), position)


def _read_quoted_key(text: str, position: int) -> tuple[str, int]:
    chars = []
    index = position + 1
    while index < len(text):
        if text[index] == "`":
            if text.startswith("``", index):
                chars.append("`")
                index += 2
                continue
            if not chars:
                raise QuerySyntaxError("empty quoted key", text, position)
            return "".join(chars), index + 1
        chars.append(text[index])
        index += 1
    raise QuerySyntaxError("unterminated quoted key", text, position)


def _read_string(text: str, position: int) -> tuple[str, int]:
    quote = text[position]
    chars = []
    index = position + 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 >= len(text):
                break
            escaped = text[index + 1]
            chars.append(_ESCAPES.get(escaped, "\\" + escaped))
            index += 2
            continue
        if char == quote:
            return "".join(chars), index + 1
        chars.append(char)
        index += 1
    raise QuerySyntaxError("unterminated string", text, position)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0

    @property
    def current(self) -> Token:
        return self.tokens[self.index]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.current
        return token.kind == "name" and token.text.lower() == word

    def fail(self, message: str, token: Token | None = None) -> QuerySyntaxError:
        token = token or self.current
        found = "end of filter" if token.kind == "end" else repr(token.text)
        return QuerySyntaxError(f"{message}, found {found}", self.text, token.position)

    def parse(self) -> Expr:
        if self.current.kind == "end":
            raise self.fail("expected a condition")
        expr = self.parse_or()
        if self.current.kind != "end":
            raise self.fail("expected 'and', 'or' or the end of the filter")
        return expr

    def parse_or(self) -> Expr:
        items = [self.parse_and()]
        while self.keyword("or"):
            self.advance()
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Expr:
        items = [self.parse_unary()]
        while self.keyword("and"):
            self.advance()
            items.append(self.parse_unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_unary(self) -> Expr:
        if self.keyword("not"):
            self.advance()
            return Not(self.parse_unary())
        if self.current.kind == "lparen":
            self.advance()
            expr = self.parse_or()
            if self.current.kind != "rparen":
                raise self.fail("expected ')'")
            self.advance()
            return expr
        return self.parse_predicate()

    def parse_field(self) -> tuple[str, ...]:
        segments = [self.parse_segment()]
        while self.current.kind == "dot":
            self.advance()
            segments.append(self.parse_segment())
        return tuple(segments)

    def parse_segment(self) -> str:
        token = self.current
        if token.kind == "quoted":
            self.advance()
            return token.value
        if token.kind == "name" and token.text.lower() not in KEYWORDS:
            self.advance()
            return token.text
        raise self.fail("expected a field name")

    def parse_predicate(self) -> Expr:
        field = self.parse_field()
        negated = False
        if self.keyword("not"):
            self.advance()
            negated = True
            if not (self.keyword("in") or self.keyword("like") or self.keyword("exists")):
                raise self.fail("expected 'in', 'like' or 'exists' after 'not'")
        if self.keyword("exists"):
            self.advance()
            return Exists(field, negated)
        if self.keyword("in"):
            self.advance()
            return In(field, self.parse_list(), negated)
        if self.keyword("like"):
            self.advance()
            token = self.current
            if token.kind != "string":
                raise self.fail("expected a quoted pattern after 'like'")
            self.advance()
            return Like(field, token.value, negated)
        token = self.current
        if token.kind != "op":
            raise self.fail("expected an operator (=, !=, <, <=, >, >=, in, like, exists)")
        self.advance()
        return Compare(field, token.value, self.parse_literal())

    def parse_list(self) -> tuple[Literal, ...]:
        if self.current.kind != "lparen":
            raise self.fail("expected '(' after 'in'")
        self.advance()
        values = [self.parse_literal()]
        while self.current.kind == "comma":
            self.advance()
            values.append(self.parse_literal())
        if self.current.kind != "rparen":
            raise self.fail("expected ',' or ')'")
        self.advance()
        return tuple(values)

    def parse_literal(self) -> Literal:
        token = self.current
        if token.kind in ("string", "number"):
            self.advance()
            return token.value
        if token.kind == "name":
            word = token.text.lower()
            constants = {"true": True, "false": False, "nan": float("nan"),
                         "inf": float("inf")}
            if word in constants:
                self.advance()
                return constants[word]
        raise self.fail("expected a value (a quoted string, a number, true or false)")


@lru_cache(maxsize=512)
def parse(text: str) -> Expr:
    """Parse filter text into a syntax tree; raise QuerySyntaxError with the position."""
    if not isinstance(text, str):
        raise QuerySyntaxError(f"filter must be a string, got {type(text).__name__}",
                               repr(text), 0)
    return _Parser(text).parse()


def parse_optional(text: str | None) -> Expr | None:
    if text is None or not text.strip():
        return None
    return parse(text)
