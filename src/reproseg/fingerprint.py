"""Code fingerprints: a script plus every project module it imports, found statically.

Snakemake's own `code` trigger sees only the script file, not the library it imports.
A fingerprint hashes the normalised AST (docstrings dropped; comments never reach the
AST), so a comment or docstring edit leaves it unchanged while any code change moves
it. Only the standard library is used: this runs while the Snakefile is parsed.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

PACKAGE = "reproseg"
SRC = Path(__file__).resolve().parent.parent


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


# Parsing every module for every rule is what makes a parse slow, so each file's
# analysis is cached by the sha256 of its bytes: in this process, and on disk between
# runs (a content key, so an edited file is always analysed again).
_CACHE_FILE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "reproseg" / "fingerprint-cache.json"
_memo: dict[str, dict] = {}
_disk: dict[str, dict] | None = None
_dirty = False


def _load_disk() -> dict:
    global _disk
    if _disk is None:
        try:
            _disk = json.loads(_CACHE_FILE.read_text())
        except (OSError, ValueError):
            _disk = {}
    return _disk


def _save_disk() -> None:
    global _dirty
    if not _dirty:
        return
    try:
        _CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
        tmp = _CACHE_FILE.with_suffix(f".{os.getpid()}.partial")
        tmp.write_text(json.dumps(_disk))
        os.replace(tmp, _CACHE_FILE)
        _dirty = False
    except OSError:
        pass  # a read-only home only costs speed


def _analyse(path: Path, module: str | None) -> dict:
    """{'hash': normalised AST hash, 'imports': [raw import targets]} of one file."""
    global _dirty
    data = path.read_bytes()
    key = hashlib.sha256(data).hexdigest() + f":{module}:{path.name == '__init__.py'}"
    if key in _memo:
        return _memo[key]
    disk = _load_disk()
    if key not in disk:
        tree = ast.parse(data, filename=str(path))
        imports = sorted(_imports_of(tree, module, path.name == "__init__.py"))
        digest = hashlib.sha256(ast.dump(_strip_docstrings(tree), annotate_fields=False).encode()).hexdigest()
        disk[key] = {"hash": digest, "imports": imports}
        _dirty = True
    _memo[key] = disk[key]
    return _memo[key]


def normalised_hash(path: Path) -> str:
    return _analyse(path, None)["hash"]


def _module_file(name: str) -> Path | None:
    """File of a project module name, or None if it is not one (an attribute, say)."""
    base = SRC.joinpath(*name.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _with_parents(name: str) -> list[str]:
    # Importing a.b.c runs a/__init__ and a/b/__init__ too.
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _imports_of(tree: ast.AST, module: str | None, is_pkg: bool) -> set[str]:
    """Dotted names of every project import in the tree (candidates; filtered later)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    continue
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_pkg else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n == PACKAGE or n.startswith(PACKAGE + "."))
    return found


def _imports(path: Path, module: str | None) -> set[str]:
    """Project modules imported anywhere in `path` (module: its dotted name, if any)."""
    found: set[str] = set()
    for name in _analyse(path, module)["imports"]:
        for candidate in _with_parents(name):
            if _module_file(candidate):
                found.add(candidate)
    return found


def closure(script: Path) -> dict[str, Path]:
    """All project modules reachable from `script` through imports."""
    seen: dict[str, Path] = {}
    todo = list(_imports(script, None))
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name)
        seen[name] = path
        todo.extend(_imports(path, name) - seen.keys())
    return dict(sorted(seen.items()))


@lru_cache(maxsize=None)
def _cached(script: str, stamp: float) -> dict:
    path = Path(script)
    modules = {name: _analyse(p, name)["hash"] for name, p in closure(path).items()}
    detail = {"script": normalised_hash(path), "modules": modules}
    _save_disk()
    digest = hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()
    return {"fingerprint": digest[:16], **detail}


def fingerprint(script: str | Path) -> dict:
    """{'fingerprint': short hash, 'script': hash, 'modules': {name: hash}}."""
    path = Path(script).resolve()
    return _cached(str(path), path.stat().st_mtime)


def short(script: str | Path) -> str:
    return fingerprint(script)["fingerprint"]


def module_short(name: str) -> str:
    """Short fingerprint of project module `name` and every project module it imports: for
    code a stage loads by name only when its config asks for it (an option), which the
    static closure of its script cannot see."""
    path = _module_file(name)
    if path is None:
        raise ValueError(f"{name}: not a module of {PACKAGE}")
    seen, todo = {}, [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen[current] = _analyse(_module_file(current), current)["hash"]
        todo.extend(_imports(_module_file(current), current) - seen.keys())
    _save_disk()
    return hashlib.sha256(json.dumps(dict(sorted(seen.items()))).encode()).hexdigest()[:16]
