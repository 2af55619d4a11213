"""The library's layout: one package per paper, shared pieces outside them, no cycles."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "reproseg"
PAPERS = ("finers", "drseg", "seganswer")
# The one deliberate crossing: Dr. Seg's rewards as an option of a FineRS GRPO stage.
ALLOWED = {("finers.drseg_option", "drseg")}


def imports(path: Path, module: str) -> set[str]:
    """Project modules `path` imports (absolute dotted names under reproseg)."""
    tree = ast.parse(path.read_text())
    out = set()
    pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1] + ([node.module] if node.module else [])
                name = ".".join(base)
            else:
                name = node.module or ""
                if not name.startswith("reproseg."):
                    continue
                name = name[len("reproseg."):]
            out.add(name)
        elif isinstance(node, ast.Import):
            out |= {a.name[len("reproseg."):] for a in node.names if a.name.startswith("reproseg.")}
    return out


def modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        yield path, ".".join(parts)


def test_no_paper_package_imports_another():
    crossings = []
    for path, module in modules():
        own = module.split(".")[0]
        if own not in PAPERS:
            continue
        for target in imports(path, module):
            other = target.split(".")[0]
            if other in PAPERS and other != own and (module, other) not in ALLOWED:
                crossings.append(f"{module} -> {target}")
    assert crossings == []


def test_shared_packages_import_no_paper_package():
    found = [f"{m} -> {t}" for p, m in modules() if m.split(".")[0] not in PAPERS
             for t in imports(p, m) if t.split(".")[0] in PAPERS]
    assert found == []


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = {}
    for path, module in modules():
        a = module.split(".")[0]
        graph.setdefault(a, set()).update(t.split(".")[0] for t in imports(path, module) if t.split(".")[0] != a)

    def reach(start, node, seen):
        for nxt in graph.get(node, ()):
            if nxt == start:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reach(start, nxt, seen):
                    return True
        return False
    assert [p for p in graph if reach(p, p, set())] == []


def test_stage_reward_terms_live_in_modules_of_their_own():
    lpr, gse = (imports(SRC / "finers" / f"{s}_rewards.py", f"finers.{s}_rewards") for s in ("lpr", "gse"))
    assert "finers.gse_rewards" not in lpr and "finers.lpr_rewards" not in gse
    shared = imports(SRC / "finers" / "rewards.py", "finers.rewards") | imports(SRC / "finers" / "train.py", "finers.train")
    assert not shared & {"finers.lpr_rewards", "finers.gse_rewards", "finers.drseg_option", "drseg.rewards"}


def test_snakefmt_check_is_clean():
    """The Snakefile and rules are formatted as snakefmt writes them (line length in pyproject.toml)."""
    import subprocess
    import sys

    root = SRC.parents[1]
    exe = Path(sys.executable).with_name("snakefmt")
    out = subprocess.run([str(exe), "--check", "Snakefile", "rules"], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


RULES = SRC.parents[1] / "rules"


def rule_blocks():
    """(file, rule name, text) of every rule in rules/*.smk."""
    import re

    for path in sorted(RULES.glob("*.smk")):
        text = path.read_text()
        starts = [(m.start(), m.group(1)) for m in re.finditer(r"^\s*rule (\w+):", text, re.M)]
        for (start, name), (end, _) in zip(starts, starts[1:] + [(len(text), None)]):
            yield path.name, name, text[start:end]


def test_every_record_is_named_after_one_of_its_jobs_outputs():
    """One convention for records and folders: `prov=prov(<path>)` where <path> is another
    output of the same rule (rules/common.smk folder_from_record finds the folders beside it)."""
    import re

    wrong = []
    for file, rule, text in rule_blocks():
        out = re.search(r"\n( +)output:\n(.*?)\n\1\w+:\n", text, re.S)
        if not out or "prov=" not in out.group(2):
            continue
        block = out.group(2)
        m = re.search(r"prov=prov\((.+?)\),(?:\n|$)", block)
        if not m or block.replace(m.group(0), "").count(m.group(1)) < 1:
            wrong.append(f"{file}: rule {rule}")
    assert not wrong


def test_rule_name_is_script_name():
    """Each rule runs workflow_scripts/<its own name>.py."""
    import re

    wrong = []
    for file, rule, text in rule_blocks():
        m = re.search(r'script_path\("(\w+)"\)', text)
        if m and m.group(1) != rule:
            wrong.append(f"{file}: rule {rule} runs {m.group(1)}")
    assert not wrong
