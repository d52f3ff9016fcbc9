"""Canonical text from the AST, comments and paragraph breaks kept.

Canonical form: four-space indentation, one statement per line, settings in the order written,
expressions without spaces (`layers=(depth-4)/6`, `conv 2*growth`) and with only the parentheses
precedence needs, numbers as written (`7_978_856`, `5.668G`), at most one blank line between
statements where the source had any, one blank line between networks. Comments stay on the line
they annotate (trailing) or before the statement they precede (full-line).
"""

from __future__ import annotations

from . import ast

INDENT = "    "
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "//": 2, "%": 2}


def format_expr(e: ast.Expr | ast.ShapeLit | ast.Dims, parent: int = 0, right: bool = False) -> str:
    """`e` in canonical form, with only the parentheses precedence needs.

    Iterative (an explicit stack of (node, parent precedence, is-right-operand)), so no
    expression depth can exhaust Python's stack.
    """
    done: list[str] = []
    todo: list[tuple[object, int, bool, bool]] = [(e, parent, right, False)]
    while todo:
        node, outer, is_right, operands_done = todo.pop()
        if isinstance(node, (ast.ShapeLit, ast.Number, ast.Name)):
            done.append(_leaf(node))
        elif not operands_done:
            todo.append((node, outer, is_right, True))
            todo.extend((child, p, r, False) for child, p, r in reversed(_contexts(node)))
        else:
            count = len(_contexts(node))
            parts = done[len(done) - count:]
            del done[len(done) - count:]
            done.append(_compose(node, parts, outer, is_right))
    return done[0]


def _leaf(e: ast.ShapeLit | ast.Number | ast.Name) -> str:
    if isinstance(e, ast.ShapeLit):
        return "x".join(str(x) for x in e.dims)
    if isinstance(e, ast.Number):
        return e.text
    return e.id


def _contexts(e) -> tuple[tuple[ast.Expr, int, bool], ...]:
    """The operands of `e`, each with the precedence it sits under and whether it is a right operand."""
    if isinstance(e, ast.Call):
        return tuple((a, 0, False) for a in e.args)
    if isinstance(e, (ast.ListExpr, ast.Dims)):
        return tuple((a, 0, False) for a in (e.items if isinstance(e, ast.ListExpr) else e.dims))
    if isinstance(e, ast.Index):
        return ((e.target, 4, False), (e.index, 0, False))  # `(a+b)[0]`, `(-a)[0]`
    if isinstance(e, ast.UnaryOp):
        return ((e.operand, 3, False),)
    if isinstance(e, ast.BinOp):
        p = _PRECEDENCE[e.op]
        return ((e.left, p, False), (e.right, p, True))
    raise AssertionError(e)


def _compose(e, parts: list[str], parent: int, right: bool) -> str:
    if isinstance(e, ast.Call):
        return f"{e.func}({', '.join(parts)})"
    if isinstance(e, ast.ListExpr):
        return f"[{', '.join(parts)}]"
    if isinstance(e, ast.Dims):
        return " x ".join(parts)
    if isinstance(e, ast.Index):
        return f"{parts[0]}[{parts[1]}]"
    if isinstance(e, ast.UnaryOp):
        s = e.op + parts[0]
        return f"({s})" if parent else s  # `a-(-1)`, never `a--1`
    p = _PRECEDENCE[e.op]
    s = f"{parts[0]}{e.op}{parts[1]}"
    return f"({s})" if p < parent or (p == parent and right) else s


def format_spec(spec: ast.SpecFile) -> str:
    return _Formatter(spec).run()


class _Formatter:
    def __init__(self, spec: ast.SpecFile):
        self.spec = spec
        self.lines: list[str] = []
        self.comments = list(spec.comments)
        self.next_comment = 0
        self.last_line = 0  # last source line emitted so far

    def run(self) -> str:
        for i, net in enumerate(self.spec.networks):
            if i:
                self.blank()
            self.network(net)
        self.leading_comments(10**9, "")
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return "\n".join(self.lines) + "\n" if self.lines else ""

    # --- comments and blank lines -----------------------------------------------------------

    def blank(self) -> None:
        if self.lines and self.lines[-1] != "" and not self.lines[-1].endswith("{"):
            self.lines.append("")

    def leading_comments(self, before_line: int, indent: str) -> None:
        """Emit full-line comments that stand before `before_line`, keeping paragraph breaks."""
        while self.next_comment < len(self.comments):
            c = self.comments[self.next_comment]
            if c.span is None or c.span.line >= before_line:
                break
            if self.last_line and c.span.line > self.last_line + 1:
                self.blank()
            self.lines.append(indent + c.text)
            self.last_line = c.span.line
            self.next_comment += 1

    def trailing_comment(self, line: int) -> str:
        if self.next_comment < len(self.comments):
            c = self.comments[self.next_comment]
            if c.span is not None and c.span.line == line:
                self.next_comment += 1
                return "  " + c.text
        return ""

    def start_item(self, span, indent: str) -> None:
        if span is None:
            return
        self.leading_comments(span.line, indent)
        if self.last_line and span.line > self.last_line + 1:
            self.blank()

    # --- structure --------------------------------------------------------------------------

    def network(self, net: ast.NetworkDef) -> None:
        self.start_item(net.span, "")
        params = ""
        if net.params:
            params = "(" + ", ".join(f"{p.name}={format_expr(p.default)}" for p in net.params) + ")"
        header_line = net.name_span.line if net.name_span else 0
        self.lines.append(f"network {net.name}{params} {{" + self.trailing_comment(header_line))
        self.last_line = header_line
        self.body(net.body, INDENT)
        self.close(net.span, "")

    def close(self, span, indent: str) -> None:
        end_line = span.end_line if span is not None else self.last_line
        self.leading_comments(end_line, indent + INDENT)
        self.lines.append(indent + "}" + self.trailing_comment(end_line))
        self.last_line = end_line

    def body(self, statements: tuple[ast.Statement, ...], indent: str) -> None:
        for stmt in statements:
            self.statement(stmt, indent)

    def statement(self, stmt: ast.Statement, indent: str) -> None:
        self.start_item(stmt.span, indent)
        if stmt.keyword == "for" and stmt.names:
            self.for_loop(stmt, indent)
            return
        parts = [stmt.keyword]
        if stmt.arg is not None:
            parts.append(format_expr(stmt.arg))
        parts.extend(f"{s.name}={format_expr(s.value)}" for s in stmt.settings)
        text = indent + " ".join(parts)
        head_line = stmt.keyword_span.line if stmt.keyword_span else self.last_line
        if stmt.body is None:
            end_line = stmt.span.end_line if stmt.span else head_line
            self.leading_comments(end_line, indent)  # comments inside a continued line
            self.lines.append(text + self.trailing_comment(end_line))
            self.last_line = end_line
            return
        if not stmt.body and (stmt.span is None or stmt.span.end_line == head_line):
            self.lines.append(text + " {}" + self.trailing_comment(head_line))
            self.last_line = head_line
            return
        self.lines.append(text + " {" + self.trailing_comment(head_line))
        self.last_line = head_line
        self.body(stmt.body, indent + INDENT)
        self.close(stmt.span, indent)

    def for_loop(self, stmt: ast.Statement, indent: str) -> None:
        """`for i, n in blocks {` … `} between {` … `}`: both bodies always open on their line."""
        head_line = stmt.keyword_span.line if stmt.keyword_span else self.last_line
        assert stmt.arg is not None  # the grammar's for_loop always has its list
        self.lines.append(f"{indent}for {', '.join(stmt.names)} in {format_expr(stmt.arg)} {{"
                          + self.trailing_comment(head_line))
        self.last_line = head_line
        self.body(stmt.body or (), indent + INDENT)
        if stmt.between is None:
            self.close(stmt.span, indent)
            return
        between_line = stmt.between_span.line if stmt.between_span else self.last_line
        self.leading_comments(between_line, indent + INDENT)
        self.lines.append(f"{indent}}} between {{" + self.trailing_comment(between_line))
        self.last_line = between_line
        self.body(stmt.between, indent + INDENT)
        self.close(stmt.span, indent)
