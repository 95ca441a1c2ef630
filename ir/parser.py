"""Parse the text format printed by `printer` (lark grammar) into a Graph.

Errors are `ParseError`s carrying file:line:column, the offending line with a caret, and
what was expected.
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np
from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .dtypes import DTYPES
from .errors import NnfuseError
from .graph import Graph, Node, Value
from .ops import OPS, OpError
from .types import TensorType

GRAMMAR = r"""
start: graph
graph: "graph" GLOBAL "(" [arg ("," arg)*] ")" "->" "(" [result ("," result)*] ")" "{" LOC? stmt* ret "}"
arg: LOCAL ":" type
result: [STRING ":"] type
?stmt: const | node
const: "const" GLOBAL ":" type ["=" literal]
node: LOCAL ("," LOCAL)* "=" NAME "(" [operand ("," operand)*] ")" attrs? ":" type ("," type)* (graph | LOC?)
?operand: LOCAL | GLOBAL
ret: "return" [operand ("," operand)*]
type: NAME "[" [dim ("," dim)*] "]"
dim: dimterm ("*" dimterm)*
?dimterm: INT | NAME
attrs: "{" [attr ("," attr)*] "}"
attr: NAME "=" avalue
?avalue: number | STRING | TRUE | FALSE | alist | dim
alist: "[" [avalue ("," avalue)*] "]"
?literal: number | INT | TRUE | FALSE | llist
llist: "[" [literal ("," literal)*] "]"
?number: FLOAT | SIGNED_INT
TRUE.2: "true"
FALSE.2: "false"
FLOAT.3: /-?(\d+\.\d*([eE][-+]?\d+)?|\d+[eE][-+]?\d+|inf|nan)(?![A-Za-z0-9_])/
SIGNED_INT.2: /-\d+/
INT: /\d+/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
LOCAL: /%([A-Za-z0-9_.]+|"(\\.|[^"\\])*")/
GLOBAL: /@([A-Za-z0-9_.\-]+|"(\\.|[^"\\])*")/
STRING: /"(\\.|[^"\\])*"/
LOC: /#[^\n]*/
COMMENT: /\/\/[^\n]*/
%import common.WS
%ignore WS
%ignore COMMENT
"""

_parser = Lark(GRAMMAR, parser="lalr", propagate_positions=True, maybe_placeholders=True)

_EXPECT = {"LOCAL": "a %value", "GLOBAL": "an @name", "NAME": "a name", "LPAR": "'('", "RPAR": "')'", "COMMA": "','",
           "COLON": "':'", "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'", "EQUAL": "'='", "INT": "an integer",
           "STRING": "a string", "RETURN": "'return'", "GRAPH": "'graph'", "CONST": "'const'", "STAR": "'*'",
           "MINUS": "'-'", "__ANON_0": "'->'", "FLOAT": "a number", "SIGNED_INT": "an integer", "LOC": "a # comment"}


class ParseError(NnfuseError, ValueError):
    """Malformed IR text; the message carries file:line:column and the offending line."""

    def __init__(self, msg: str, text: str, line: int, column: int, filename: str = "<string>"):
        lines = text.splitlines()
        src = lines[line - 1] if 0 < line <= len(lines) else ""
        super().__init__(f"{filename}:{line}:{column}: {msg}\n  {src}\n  {' ' * (column - 1)}^")
        self.line, self.column, self.filename = line, column, filename


def _unquote(s: str) -> str:
    return json.loads(s) if s.startswith('"') else s


def _unescape_loc(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(s[i + 1], s[i + 1]))
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _loc_text(tok: Token) -> str:
    """The text of a `# loc` comment: the printer writes '# ' + escaped loc (so edge spaces survive)."""
    s = str(tok)[1:].rstrip("\r")
    return _unescape_loc(s[1:] if s.startswith(" ") else s)


def parse(text: str, filename: str = "<string>") -> Graph:
    """Parse IR text into a Graph (constants without inline values carry no data yet)."""
    try:
        tree = _parser.parse(text)
    except UnexpectedInput as e:
        line, col = e.line, e.column
        at_end = isinstance(e, UnexpectedEOF) or getattr(getattr(e, "token", None), "type", None) == "$END"
        if at_end or line is None or line <= 0:  # lark has no position at the end of input: point past the last character
            lines = text.split("\n")
            line, col = len(lines), len(lines[-1]) + 1
            if not lines[-1].strip() and len(lines) > 1:
                line, col = len(lines) - 1, len(lines[-2]) + 1
        raise ParseError(_describe(e), text, line, max(col, 1), filename) from None
    return _Builder(text, filename).graph(tree.children[0])


def _describe(e: UnexpectedInput) -> str:
    exp = sorted({_EXPECT.get(t, t) for t in (getattr(e, "expected", None) or getattr(e, "allowed", None) or [])})
    want = f"; expected {', '.join(exp[:8])}" if exp else ""
    if isinstance(e, UnexpectedEOF):
        return "unexpected end of input" + want
    if isinstance(e, UnexpectedCharacters):
        return f"unexpected character {e.char!r}" + want
    if isinstance(e, UnexpectedToken):
        tok = e.token
        what = "end of input" if tok.type == "$END" else repr(str(tok))
        return f"unexpected {what}" + want
    return str(e).splitlines()[0]


class _Builder:
    def __init__(self, text: str, filename: str):
        self.text, self.filename = text, filename

    def err(self, msg: str, item) -> ParseError:
        line = getattr(item, "line", None) or getattr(getattr(item, "meta", None), "line", 1) or 1
        col = getattr(item, "column", None) or getattr(getattr(item, "meta", None), "column", 1) or 1
        return ParseError(msg, self.text, line, col, self.filename)

    def type(self, t: Tree) -> TensorType:
        name = t.children[0]
        if str(name) not in DTYPES:
            raise self.err(f"unknown dtype '{name}'; valid: {', '.join(DTYPES)}", name)
        dims = [self.dim(d) for d in t.children[1:] if d is not None]
        return TensorType(dims, str(name))

    def dim(self, d: Tree):
        parts = [str(c) for c in d.children]
        if len(parts) == 1 and parts[0].isdigit():
            return int(parts[0])
        return "*".join(parts)

    def avalue(self, v):
        if isinstance(v, Token):
            if v.type == "STRING":
                return _unquote(v)
            if v.type in ("TRUE", "FALSE"):
                return v.type == "TRUE"
            if v.type in ("INT", "SIGNED_INT"):
                return int(v)
            if v.type == "FLOAT":
                return float(v)
            return str(v)
        if v.data == "alist":
            return tuple(self.avalue(c) for c in v.children if c is not None)
        if v.data == "dim":
            d = self.dim(v)
            return d
        raise self.err("bad attribute value", v)

    def literal(self, v) -> list:
        if isinstance(v, Token):
            return [self.avalue(v)]
        out = []
        for c in v.children:
            if c is not None:
                out += self.literal(c)
        return out

    def graph(self, t: Tree, outer_loc: Optional[list] = None) -> Graph:
        ch = t.children
        g = Graph(_unquote(str(ch[0])[1:]))
        scope: dict[str, Value] = {}
        i = 1
        args, results = [], []
        while i < len(ch) and (ch[i] is None or (isinstance(ch[i], Tree) and ch[i].data == "arg")):
            if ch[i] is not None:
                args.append(ch[i])
            i += 1
        while i < len(ch) and (ch[i] is None or (isinstance(ch[i], Tree) and ch[i].data == "result")):
            if ch[i] is not None:
                results.append(ch[i])
            i += 1
        for a in args:
            tok = a.children[0]
            if str(tok) in scope:
                raise self.err(f"input {tok} defined twice", tok)
            scope[str(tok)] = g.add_input(_unquote(str(tok)[1:]), self.type(a.children[1]))
        declared_out = []
        for r in results:
            name = _unquote(str(r.children[0])) if r.children[0] is not None else ""
            declared_out.append((name, self.type(r.children[1]), r))
        if i < len(ch) and isinstance(ch[i], Token) and ch[i].type == "LOC":
            if outer_loc is not None:
                outer_loc.append(_loc_text(ch[i]))
            i += 1
        for st in ch[i:]:
            if st is None:
                continue
            if st.data == "const":
                self.const(g, st, scope)
            elif st.data == "node":
                self.node(g, st, scope)
            elif st.data == "ret":
                outs = [self.lookup(scope, o) for o in st.children if o is not None]
                if len(outs) != len(declared_out):
                    raise self.err(f"return has {len(outs)} values but the signature declares {len(declared_out)}", st)
                for v, (name, ty, r) in zip(outs, declared_out):
                    if v.type != ty:
                        raise self.err(f"returned value has type {v.type}, signature says {ty}", r)
                g.set_outputs(outs, [n for n, _, _ in declared_out] if any(n for n, _, _ in declared_out) else None)
        return g

    def lookup(self, scope: dict, tok: Token) -> Value:
        try:
            return scope[str(tok)]
        except KeyError:
            raise self.err(f"use of undefined value {tok}", tok) from None

    def const(self, g: Graph, st: Tree, scope: dict) -> None:
        tok, ty, lit = st.children
        name = _unquote(str(tok)[1:])
        if str(tok) in scope:
            raise self.err(f"constant {tok} defined twice", tok)
        t = self.type(ty)
        data = None
        if lit is not None:
            vals = self.literal(lit)
            n = int(np.prod([d for d in t.shape])) if t.static else -1
            if len(vals) != n:
                raise self.err(f"constant {tok} of type {t} needs {n} values, got {len(vals)}", tok)
            data = np.array(vals, dtype=np.float64 if t.dtype.is_float else None).astype(t.dtype.np).reshape(t.shape)
        scope[str(tok)] = g.add_const_decl(name, t, data)

    def node(self, g: Graph, st: Tree, scope: dict) -> None:
        ch = st.children
        outs = []
        i = 0
        while isinstance(ch[i], Token) and ch[i].type == "LOCAL":
            outs.append(ch[i])
            i += 1
        op = ch[i]
        i += 1
        operands = []
        while i < len(ch) and (ch[i] is None or (isinstance(ch[i], Token) and ch[i].type in ("LOCAL", "GLOBAL"))):
            if ch[i] is not None:
                operands.append(self.lookup(scope, ch[i]))
            i += 1
        attrs = {}
        if i < len(ch) and isinstance(ch[i], Tree) and ch[i].data == "attrs":
            for a in ch[i].children:
                if a is not None:
                    attrs[str(a.children[0])] = self.avalue(a.children[1])
            i += 1
        elif i < len(ch) and ch[i] is None:
            i += 1
        types = []
        while i < len(ch) and isinstance(ch[i], Tree) and ch[i].data == "type":
            types.append(self.type(ch[i]))
            i += 1
        body, loc = None, []
        rest = [c for c in ch[i:] if c is not None]
        for c in rest:
            if isinstance(c, Tree) and c.data == "graph":
                body = self.graph(c, loc)
            elif isinstance(c, Token) and c.type == "LOC":
                loc.append(_loc_text(c))
        if str(op) not in OPS:
            raise self.err(f"unknown op '{op}'", op)
        if len(outs) != len(types):
            raise self.err(f"{len(outs)} results but {len(types)} types", op)
        try:
            od = OPS[str(op)]
            od.check_arity(len(operands))
            if body is not None:  # a fused node carries free-form attributes beside its schema (kind)
                attrs = {**attrs, **od.normalize_attrs({k: v for k, v in attrs.items() if k in od.attrs})}
            else:
                attrs = od.normalize_attrs(attrs)
        except OpError as e:
            raise self.err(str(e), op) from None
        if body is None:
            try:  # the result count is structural; a wrong result *type* is the verifier's type-agreement rule
                want = len(od.infer_types([v.type for v in operands], attrs))
            except OpError:
                want = len(types)
            if want != len(types):
                raise self.err(f"op '{op}' gives {want} result(s), the text binds {len(types)}", op)
        n = Node(str(op), operands, attrs, types, {"loc": loc[0]} if loc else None, body)
        for tok, v in zip(outs, n.outputs):
            if str(tok) in scope:
                raise self.err(f"value {tok} defined twice (SSA)", tok)
            scope[str(tok)] = v
        g.add_node(n)


def parse_file(path: str) -> Graph:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise NnfuseError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise NnfuseError(f"{path}: cannot read as nnir text ({e})") from None
    return parse(text, path)
