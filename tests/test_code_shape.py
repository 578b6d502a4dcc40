"""The library stays easy to change: files and functions small enough to read at once, the
store's schema spelled only inside teacher_logits/, and no import-path tricks in the packages.

A longer file or function is allowed where a `# long: <why>` comment stands in its first lines.
"""
import ast

import pytest
from conftest import REPO

LIBRARY = sorted([*REPO.glob("distill/**/*.py"), *REPO.glob("teacher_logits/*.py")])
MAX_FILE_LINES, MAX_FUNCTION_LINES = 300, 60
STORE_COLUMNS = {"topk_idx", "topk_val", "partner"}  # the codec's column names: teacher_logits/schema.py


def excused(lines: list[str], first: int) -> bool:
    return any("# long:" in line for line in lines[first:first + 3])


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(REPO)))
def test_library_file_shape(path):
    source = path.read_text()
    lines = source.splitlines()
    assert len(lines) <= MAX_FILE_LINES or excused(lines, 0), f"{len(lines)} lines: split it by concern"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES and not excused(lines, node.lineno - 1)]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"
    assert "sys.path" not in source, "the packages are installed (pip install -e .): no sys.path edits"


@pytest.mark.parametrize("path", [p for p in LIBRARY if p.parent.name != "teacher_logits"] +
                         sorted(REPO.glob("tools/*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_store_columns_are_named_only_in_teacher_logits(path):
    names = {node.value for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not names & STORE_COLUMNS, f"store column names {sorted(names & STORE_COLUMNS)}: use teacher_logits' schema"


def imports_of(path) -> set[str]:
    """The project modules `path` imports, at module level or inside functions (absolute names)."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in LIBRARY}
    return {name for name in found if name in modules and name != module}


def test_no_import_cycle_and_the_store_imports_no_model_code():
    """Lazy imports count: a cycle broken by importing inside a function is still a cycle."""
    graph = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): imports_of(p)
             for p in LIBRARY}
    for module, imported in graph.items():
        if module.startswith("teacher_logits"):
            assert not {m for m in imported if not m.startswith("teacher_logits")}, module
        program = module.startswith("distill.programs") or module == "distill.train_student"  # the launcher's entry
        if not program:  # the library never imports a program
            assert not {m for m in imported if m.startswith("distill.programs")}, module
    state = {}

    def visit(module, trail):  # depth-first: a module met again on its own trail closes a cycle
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join([*trail, module])}"
        state[module] = "open"
        for other in sorted(graph.get(module, ())):
            if other != module.rpartition(".")[0]:  # a module importing its own package's __init__
                visit(other, [*trail, module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
