"""Imports sit at module top; one inside a function says why it must stay lazy (`# lazy: ...`).

A lazy import is for a heavy module that must stay out of the Snakefile's parse, an
optional dependency, a cycle that cannot be removed, or a CLI subcommand's own deps.
"""
import ast
import io
import tokenize
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "reproseg"
MARKER = "# lazy:"
# Paths (relative to src/reproseg) not converted yet; each entry goes once its files are.
NOT_YET = ()

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def imports_in_functions(tree: ast.AST) -> list[ast.stmt]:
    """Import statements nested (at any depth) in a function or method."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append(child)
            visit(child, in_function or isinstance(child, _FUNCTIONS))

    visit(tree, False)
    return found


def marked_lines(source: str) -> set[int]:
    """Line numbers holding a `# lazy:` comment (real comments, not text in strings)."""
    return {tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline)
            if tok.type == tokenize.COMMENT and tok.string.startswith(MARKER)}


def unmarked_lazy_imports(path: Path) -> list[str]:
    source = path.read_text()
    marked = marked_lines(source)
    rel = path.relative_to(SRC).as_posix()
    lines = source.splitlines()
    out = []
    for node in imports_in_functions(ast.parse(source, filename=str(path))):
        # the comment may sit on the line above, or on any line of the statement
        if not marked & set(range(node.lineno - 1, (node.end_lineno or node.lineno) + 1)):
            out.append(f"src/reproseg/{rel}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return out


def test_marker_detection():
    source = ("import os\n\n\ndef f():\n    import json\n    # lazy: reason\n    import re\n"
              "    import sys   # lazy: reason\n    x = 1\n    s = '# lazy: in a string'; import ast\n\n"
              "    def g():\n        from typing import Any\n")
    tree = ast.parse(source)
    marked = marked_lines(source)
    unmarked = [n.lineno for n in imports_in_functions(tree)
                if not marked & set(range(n.lineno - 1, n.end_lineno + 1))]
    assert unmarked == [5, 10, 13]


def test_imports_inside_functions_say_why_they_are_lazy():
    offending = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).as_posix().startswith(NOT_YET):
            continue
        offending += unmarked_lazy_imports(path)
    assert not offending, (
        f"{len(offending)} import(s) inside a function without a '{MARKER} <why>' comment on the line or the "
        "line above; move each to the module's top import block, or say why it must stay lazy:\n"
        + "\n".join(offending))
