"""Text → AST. The only module that imports lark, and the Transformer the only code that sees
lark trees. Syntax errors become diagnostics with the position, what was found and what was
expected; after an error the broken line is neutralised and parsing resumes, so one run
reports every independently broken line.

Hostile input is refused before it costs anything (E006, E004): the text's size, lines and tokens,
the bracket depth, the number of networks and the operators in one expression are all capped far
above any real spec, so parsing takes well under a second and tens of MB at worst. Nothing here
recurses on the input's structure (lark's LALR parser is iterative; the Transformer is lark's
non-recursive one), and the expression cap keeps every later tree walk, dataclass `==` and
`repr` included, far from Python's recursion limit.
"""

from __future__ import annotations

import re
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, cast

import lark
from lark import Lark, Token, v_args
from lark.visitors import Transformer_NonRecursive

from ..core import diagnostics as d
from ..core.source import Source, Span
from . import ast

MAX_NESTING = 64          # brackets and braces; deeper input is refused before parsing
MAX_SYNTAX_ERRORS = 20
# Limits on a whole spec (E006). Real specs are ~1 KB, ~40 lines, ~200 tokens, one network and
# expressions of a few operators; each limit sits 100x or more above that. Together they bound
# the parser's work: lark handles ~60,000 tokens a second on a loaded core.
MAX_CHARS = 1024 * 1024
MAX_LINES = 10_000
MAX_TOKENS = 20_000       # names, numbers, operators, brackets, ";" and comments
MAX_NETWORKS = 256
MAX_OPERATORS = 200       # operators, calls and arguments in one expression
_TOKEN = re.compile(r"[A-Za-z0-9_.]+|//|#[^\n]*|\S")
_BLANKS = re.compile(r"[\s;\\]*")  # one character class: no backtracking, no per-character state
_HEADER = re.compile(r"network(?![A-Za-z0-9_])")
_SUFFIX = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def grammar_text() -> str:
    """The grammar, from the installed package or, in a source checkout, from grammars/."""
    try:
        return resources.files("densedsl.grammars").joinpath("densedsl.lark").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return (Path(__file__).resolve().parents[2] / "grammars" / "densedsl.lark").read_text("utf-8")


@lru_cache(maxsize=None)
def parser(strict: bool = False) -> Lark:
    options = dict(parser="lalr", propagate_positions=True, maybe_placeholders=True,
                   start=["start", "expr"])
    if strict:
        options["strict"] = True
    else:
        # lark pickles the built LALR tables to the temp directory ("x2 to x3 faster loading"):
        # grammar construction is most of `densedsl check`'s start-up otherwise
        options["cache"] = True
    return Lark(grammar_text(), **options)


def parse_source(source: Source) -> ast.SpecFile:
    """Parse a whole file; raises SpecError with every syntax error found.

    Until the text has parsed, its lines are quoted only if it opens like a spec (its first token
    is `network`): `densedsl check /etc/shadow` must not print the first line of /etc/shadow.
    """
    _check_limits(source.unquotable())  # refused unread: no line of it is known to be spec text
    shown = source if _opens_like_spec(source.text) else source.unquotable()
    _check_nesting(shown)
    tree, errors = _parse_recovering(shown)
    if errors:
        raise d.SpecError(errors)
    builder = _Builder(source)
    spec = builder.transform(tree)
    if builder.errors:
        raise d.SpecError(builder.errors)
    if len(spec.networks) > MAX_NETWORKS:
        extra = spec.networks[MAX_NETWORKS]
        raise d.SpecError([d.Diagnostic(
            d.TOO_COMPLEX, f"the file holds {len(spec.networks):,} networks (at most {MAX_NETWORKS:,})",
            extra.name_span, "split the networks over several files")])
    comments = tuple(
        ast.Comment(text=m.group().rstrip(), span=source.span(m.start(), m.end()))
        for m in re.finditer(r"#[^\r\n]*", source.text))
    return ast.SpecFile(networks=spec.networks, comments=comments, span=spec.span)


def _parse_recovering(source: Source):
    """Parse; after an error, neutralise the broken line and parse again to find the next one.

    lark's token-skipping `on_error` cascades (every later line of a network fails once the
    parser has lost its place); replacing the broken line by a harmless statement of the same
    length keeps every later position and the brace structure intact, so each further error is
    an independent one. An unexpected end of input ends the search.
    """
    text = source.text
    errors: list[d.Diagnostic] = []
    tries: dict[int, int] = {}
    # each retry re-parses from the start, up to its error: stop once the retries together have
    # read about as much as the text again, so a large file with errors all through it stays fast
    budget = len(text) + 64 * 1024
    while True:
        try:
            return parser().parse(text, start="start"), errors
        except lark.UnexpectedInput as e:
            diag = _translate(source, e)
            budget -= diag.span.start if diag.span is not None else len(text)
            line = diag.line or 0
            if line in tries:
                # the error lies in our own replacement: never show it; blank the line fully
                # once, and give up if even that does not help
                if tries[line] >= 2:
                    return None, errors
                tries[line] = 2
                text = _neutralise(text, source, line, keep_statement=False)
                continue
            errors.append(diag)
            tries[line] = 1
            expected = getattr(e, "expected", None) or ()
            header = source.line_text(line).lstrip().startswith("network") if line else True
            if (diag.code is d.UNEXPECTED_EOF or len(errors) >= MAX_SYNTAX_ERRORS or budget < 0 or header
                    or "NETWORK" in expected or not 1 <= line <= len(source.line_starts)):
                return None, errors
            text = _neutralise(text, source, line, keep_statement=True)


def _neutralise(text: str, source: Source, line: int, keep_statement: bool) -> str:
    start = source.line_starts[line - 1]
    end = source.line_starts[line] - 1 if line < len(source.line_starts) else len(text)
    old = text[start:end]
    body = old.rstrip("\r")
    indent = len(body) - len(body.lstrip())
    stripped = body.strip()
    closes = len(stripped) - len(stripped.lstrip("}"))
    opens = stripped.count("{") - stripped.count("}") + closes
    new = " " * indent + "}" * closes
    if keep_statement and opens > 0:
        new += (" " if closes else "") + "_" + " {" * opens
    if len(new) > len(body):  # cannot keep the structure in the space the line had
        new = " " * indent + "}" * closes
    new = new.ljust(len(body)) + old[len(body):]
    return text[:start] + new + text[end:]


def parse_expression(text: str, name: str = "<value>") -> ast.Expr:
    """Parse one expression (a `--set` value); raises SpecError."""
    source = Source.from_text(text, name)
    _check_limits(source)
    _check_nesting(source)
    try:
        tree = parser().parse(text, start="expr")
    except lark.UnexpectedInput as e:
        raise d.SpecError([_translate(source, e)]) from None
    builder = _Builder(source)
    expr = builder.transform(tree)
    if builder.errors:
        raise d.SpecError(builder.errors)
    return expr


def _opens_like_spec(text: str) -> bool:
    """Whether the first token, after blanks, ';' and comments, is the `network` keyword."""
    pos = cast(re.Match[str], _BLANKS.match(text)).end()  # _BLANKS matches anywhere, if only ''
    while text.startswith("#", pos):
        end = text.find("\n", pos)
        if end == -1:
            return False
        pos = cast(re.Match[str], _BLANKS.match(text, end)).end()
    return _HEADER.match(text, pos) is not None


def _check_limits(source: Source) -> None:
    """Refuse a text too large to be a spec (E006) before lark reads it.

    Checked in order of cost: characters (free), lines (one C-level count), tokens (a scan that
    stops at the limit). A run of blank lines or ';' is a single token for lark, whose regex
    engine nonetheless keeps ~600 bytes per repetition (3 MiB of newlines took 1.8 GB): the line
    and token limits bound that too.
    """
    text = source.text

    def refuse(offset: int, what: str, hint: str) -> d.SpecError:
        return d.SpecError([d.Diagnostic(d.TOO_COMPLEX, what, _span_at(source, offset), hint)])

    if len(text) > MAX_CHARS:
        raise refuse(MAX_CHARS, f"the text is longer than {MAX_CHARS // 1024:,} KiB",
                     "a spec is a short text file; split a collection of networks over several files")
    if text.count("\n") + (not text.endswith("\n")) > MAX_LINES:
        offset = -1
        for _ in range(MAX_LINES):
            offset = text.find("\n", offset + 1)
        raise refuse(offset + 1, f"the text has more than {MAX_LINES:,} lines",
                     "a spec is a short text file; split a collection of networks over several files")
    for count, match in enumerate(_TOKEN.finditer(text), 1):
        if count > MAX_TOKENS:
            raise refuse(match.start(), f"the text has more than {MAX_TOKENS:,} tokens",
                         "a spec is a short text file; split a collection of networks over several files")


def _span_at(source: Source, offset: int) -> Span:
    """A one-character span at `offset`, without building the text's whole line table."""
    text = source.text
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    end = min(offset + 1, len(text))
    return Span(source, line, column, line, column + (end - offset), offset, end)


def _check_nesting(source: Source) -> None:
    """Refuse absurd nesting (E004) before anything walks it."""
    depth = 0
    for match in re.finditer(r"#[^\n]*|[(){}\[\]]", source.text):  # comments may hold any characters
        ch = match.group()
        if ch in "({[":
            depth += 1
            if depth > MAX_NESTING:
                i = match.start()
                raise d.SpecError([d.Diagnostic(
                    d.TOO_DEEP, f"brackets nested more than {MAX_NESTING} deep",
                    source.span(i, i + 1), "a spec never needs this much nesting; "
                    "use `repeat` for repeated blocks")])
        elif ch in ")}]":
            depth = max(0, depth - 1)


_DESCRIPTIONS = {
    "NAME": "a name", "NUMBER": "a number", "SHAPE": "a shape like 3x32x32", "TIMES": "'x'",
    "_NL": "a new line", "$END": "the end of the file",
}


def _describe_terminal(name: str) -> str:
    if name in _DESCRIPTIONS:
        return _DESCRIPTIONS[name]
    try:
        pattern = parser().get_terminal(name).pattern
    except KeyError:
        return name.lower()
    if isinstance(pattern, lark.lexer.PatternStr):
        return f"'{pattern.value}'"
    return name.lower()


def _describe_token(token: Token, quote: bool = True) -> str:
    """`name 'grwoth'`; only the kind (`a name`) when the text may not be quoted."""
    if token.type == "_NL":
        return "comment" if token.value.lstrip().startswith("#") else "end of line"
    if token.type == "$END":
        return "end of file"
    kind = {"NAME": "name", "NUMBER": "number", "SHAPE": "shape"}.get(token.type)
    if not quote:
        return kind or "symbol"
    return f"{kind} '{token.value}'" if kind else f"'{token.value}'"


# Terminal names as grammars/densedsl.lark defines them (never lark's generated `__ANON_n`).
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "FLOORDIV", "PERCENT"}


def _describe_expected(expected: list[str]) -> str:
    """Collapse token lists: `a value` for anything that can start an expression, `an operator`."""
    names = set(expected)
    # `[`, the `x` of `3 x size` and `for` are extensions of what is already listed (a value
    # or an index, an operator, a statement's name): naming them only lengthens every message
    if names & ({"NUMBER", "LPAR"} | _OPERATORS):
        names -= {"LSQB", "TIMES"}
    if "NAME" in names:
        names.discard("FOR")
    if not names - {"NUMBER", "NAME", "LPAR", "PLUS", "MINUS", "LSQB", "SHAPE"}:
        names.discard("SHAPE")  # after `kernel=`: `1x7` is a value too, and "a value" says it
    items = []
    if "NUMBER" in names:
        names -= {"NUMBER", "NAME", "LPAR", "PLUS", "MINUS"} - ({"NAME"} if "EQUAL" in names else set())
        items.append("a value")
    if names & _OPERATORS:
        names -= _OPERATORS
        items.append("an operator")
    items.extend(_describe_terminal(t) for t in names)
    return _join(items)


def _join(items: list[str]) -> str:
    items = sorted(set(items), key=lambda s: (not s.startswith("a"), s))
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]


def _translate(source: Source, e: lark.UnexpectedInput) -> d.Diagnostic:
    if isinstance(e, lark.UnexpectedCharacters):
        pos = cast(int, e.pos_in_stream)  # None only in lark's base class; this one sets the offset
        word = re.match(r"[0-9][0-9A-Za-z_.]*", source.text[pos:])
        if word and source.text[pos].isdigit():
            shown = f"'{word.group()}'" if source.quotable else "a word starting with a digit"
            return d.Diagnostic(d.BAD_NUMBER, f"{shown} is not a number",
                                source.span(pos, pos + len(word.group())),
                                "numbers look like 12, 0.5, 1e-4 or 5.668G (suffixes K M G T); "
                                "write multiplication with '*', e.g. 2*growth")
        ch = source.text[pos]
        shown = f" {ch!r}" if source.quotable else ""
        return d.Diagnostic(d.BAD_CHARACTER, f"unexpected character{shown}", source.span(pos, pos + 1),
                            "densedsl specs use names, numbers, shapes like 3x32x32, "
                            "= ( ) [ ] { } , ; + - * / // % and # comments")
    if isinstance(e, lark.UnexpectedEOF) or (isinstance(e, lark.UnexpectedToken) and e.token.type == "$END"):
        expected = getattr(e, "expected", None) or []
        what = f": expected {_describe_expected(list(expected))}" if expected else ""
        return d.Diagnostic(d.UNEXPECTED_EOF, f"unexpected end of input{what}", source.end_span(),
                            "a '{' is probably not closed" if "RBRACE" in expected else None)
    if isinstance(e, lark.UnexpectedToken):
        token = e.token
        expected = sorted(getattr(e, "accepts", None) or e.expected)
        span = Span.from_meta(source, token)
        if token.type == "_NL":
            # point at the end of the previous line, not at the blank space before the comment
            start = token.start_pos
            span = source.span(start, start + 1) if token.value.startswith("#") else source.span(start, start)
        found = _describe_token(token, source.quotable)
        wanted = _describe_expected(expected)
        hint = None
        if "NAME" in expected and "NETWORK" not in expected and token.type == "NUMBER":
            hint = "settings are written name=value, e.g. layers=6"
        elif "NETWORK" in expected:
            hint = "a spec file holds networks: network NAME { ... }"
        elif token.type == "EQUAL" and re.search(r"(?<![A-Za-z0-9_])x\s*$", source.text[:token.start_pos]):
            # `layers=3 x=1`: after a value, x was read as the dimension separator
            hint = ("after a value, 'x' separates dimensions (input 3 x size x size, kernel=1 x k); "
                    "no setting is called x")
        elif token.type == "EQUAL":
            hint = "a setting needs a name before '=': e.g. growth=32"
        elif token.type == "TIMES":
            hint = ("after a value, 'x' separates dimensions (input 3 x size x size, kernel=1 x k); "
                    "no setting is called x")
        return d.Diagnostic(d.SYNTAX, f"unexpected {found}: expected {wanted}", span, hint)
    return d.Diagnostic(d.SYNTAX, str(e).splitlines()[0], source.end_span())


def _number(source: Source, token: Token) -> tuple[ast.Number | None, d.Diagnostic | None]:
    text = token.value
    body = text.replace("_", "")
    scale = 1
    if body[-1] in _SUFFIX:
        scale, body = _SUFFIX[body[-1]], body[:-1]
    mantissa, _, exponent = body.lower().partition("e")
    span = Span.from_meta(source, token)
    shown = text if len(text) <= 40 else text[:20] + "…" + text[-8:]
    if len(mantissa) > ast.MAX_DIGITS or (exponent and abs(int(exponent)) > 1000):
        return None, d.Diagnostic(d.BAD_NUMBER, f"the number '{shown}' is absurdly large or precise",
                                  span, "network sizes are far smaller than this")
    value = Fraction(mantissa if mantissa not in ("", ".") else "0")
    if exponent:
        value *= Fraction(10) ** int(exponent)
    value *= scale
    if not ast.fits(value):
        return None, d.Diagnostic(d.BAD_NUMBER, f"the number '{shown}' has more than {ast.MAX_DIGITS} digits",
                                  span, "network sizes are far smaller than this")
    return ast.Number(value=value, text=text, span=span), None


@v_args(meta=True)
class _Builder(Transformer_NonRecursive):
    """lark tree → ast nodes. Spans come from `meta` (propagate_positions=True).

    Counts the operators of every expression as it builds it bottom-up, and refuses one with more
    than MAX_OPERATORS (E006) once, at the innermost node that crosses the limit.
    """

    def __init__(self, source: Source):
        super().__init__()
        self.source = source
        self.errors: list[d.Diagnostic] = []
        self._sizes: dict[int, int] = {}  # id(expression node) -> its operators; 0 when absent

    def _counted(self, node, children, extra: int = 0):
        sizes = [self._sizes.get(id(c), 0) for c in children]
        size = 1 + extra + sum(sizes)
        self._sizes[id(node)] = size
        if size > MAX_OPERATORS and max(sizes, default=0) <= MAX_OPERATORS:
            self.errors.append(d.Diagnostic(
                d.TOO_COMPLEX, f"the expression has more than {MAX_OPERATORS} operators", node.span,
                "write the value itself, or split the computation over parameters"))
        return node

    def _span(self, meta) -> Span | None:
        if getattr(meta, "empty", True):
            return None
        return Span.from_meta(self.source, meta)

    def start(self, meta, children):
        return ast.SpecFile(networks=tuple(children), span=self._span(meta))

    def network(self, meta, children):
        name, *rest = children
        params = rest[0] if len(rest) == 2 else ()
        body = rest[-1]
        return ast.NetworkDef(name=str(name), params=tuple(params), body=tuple(body),
                              span=self._span(meta), name_span=Span.from_meta(self.source, name))

    def params(self, meta, children):
        return tuple(c for c in children if c is not None)

    def param(self, meta, children):
        name, value = children
        return ast.Param(name=str(name), default=value, span=self._span(meta),
                         name_span=Span.from_meta(self.source, name))

    def body(self, meta, children):
        return tuple(children)

    def statement(self, meta, children):
        keyword, arg, *settings, body = children
        return ast.Statement(keyword=str(keyword), arg=arg, settings=tuple(settings),
                             body=None if body is None else tuple(body), span=self._span(meta),
                             keyword_span=Span.from_meta(self.source, keyword))

    def for_loop(self, meta, children):
        _, first, second, _, iterable, body, between, between_body = children
        names = (first,) if second is None else (first, second)
        return ast.Statement(keyword="for", arg=iterable, body=tuple(body),
                             names=tuple(str(x) for x in names),
                             between=None if between_body is None else tuple(between_body),
                             span=self._span(meta), keyword_span=Span.from_meta(self.source, children[0]),
                             name_spans=tuple(Span.from_meta(self.source, x) for x in names),
                             between_span=None if between is None else Span.from_meta(self.source, between))

    def dims(self, meta, children):
        dims = tuple(c for c in children if not isinstance(c, Token))
        return self._counted(ast.Dims(dims=dims, span=self._span(meta)), dims)

    def list(self, meta, children):
        items = tuple(c for c in children if c is not None)
        # each element counts as an operator, as a call's arguments do: the list-length cap
        return self._counted(ast.ListExpr(items=items, span=self._span(meta)), items, len(items))

    def index(self, meta, children):
        target, index = children
        return self._counted(ast.Index(target=target, index=index, span=self._span(meta)), children)

    def setting(self, meta, children):
        name, value = children
        return ast.Setting(name=str(name), value=value, span=self._span(meta),
                           name_span=Span.from_meta(self.source, name))

    # a helper run in the class body to make methods, deleted below, never a method itself
    def _binop(op: str) -> Callable[..., ast.BinOp]:  # type: ignore[misc]
        def method(self, meta, children):
            left, right = children
            return self._counted(ast.BinOp(op=op, left=left, right=right, span=self._span(meta)), children)
        return method

    add, sub, mul = _binop("+"), _binop("-"), _binop("*")
    div, floordiv, mod = _binop("/"), _binop("//"), _binop("%")
    del _binop

    def neg(self, meta, children):
        return self._counted(ast.UnaryOp(op="-", operand=children[0], span=self._span(meta)), children)

    def pos(self, meta, children):
        return self._counted(ast.UnaryOp(op="+", operand=children[0], span=self._span(meta)), children)

    def number(self, meta, children):
        node, error = _number(self.source, children[0])
        if error is not None:
            self.errors.append(error)
            return ast.Number(value=Fraction(0), text="0", span=error.span)
        return node

    def name(self, meta, children):
        return ast.Name(id=str(children[0]), span=self._span(meta))

    def call(self, meta, children):
        func, *args = children
        args = tuple(a for a in args if a is not None)
        # each argument counts as an operator: `max(1,1,…)` with 100,000 arguments is refused too
        return self._counted(ast.Call(func=str(func), args=args, span=self._span(meta),
                                      func_span=Span.from_meta(self.source, func)), args, len(args))

    def SHAPE(self, token):
        span = Span.from_meta(self.source, token)
        dims = token.value.split("x")
        if any(len(x) > 12 for x in dims):
            self.errors.append(d.Diagnostic(d.BAD_NUMBER, f"the shape '{token.value}' is absurdly large",
                                            span, "shapes are channels x height x width, e.g. 3x224x224"))
            return ast.ShapeLit(dims=(1, 1, 1), span=span)
        return ast.ShapeLit(dims=tuple(int(x) for x in dims), span=span)
