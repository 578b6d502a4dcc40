"""The library stays easy to change: files and functions small enough to read at once, the
store's schema spelled only inside teacher_logits/, no import-path tricks outside tests/ (the
packages, benchmarks included, are installed), no library module importing a program, and none
taking argparse's flags (programs build typed jobs).

A longer file or function is allowed where a `# long: <why>` comment stands in its first lines.
"""
import ast
import subprocess

import pytest
from helpers import REPO

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
                         sorted([*REPO.glob("tools/*.py"), *REPO.glob("benchmarks/*.py")]),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_store_columns_are_named_only_in_teacher_logits(path):
    names = {node.value for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert not names & STORE_COLUMNS, f"store column names {sorted(names & STORE_COLUMNS)}: use teacher_logits' schema"


def project_python() -> list:
    """Every .py file git tracks or would track (untracked, not ignored) outside tests/; without
    git (a copy of the tree), those of the packages and programs."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "*.py"],
                                cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(REPO)) for folder in ("distill", "teacher_logits", "tools", "benchmarks")
                  for p in (REPO / folder).rglob("*.py")]
    return sorted({REPO / p for p in listed if p and not p.startswith("tests/") and (REPO / p).is_file()})


def test_no_sys_path_outside_tests():
    """Programs and benchmarks import the installed packages (pip install -e .): no sys.path edits,
    read or written, in code (comments and docstrings may name it)."""
    found = []
    for path in project_python():
        for node in ast.walk(ast.parse(path.read_text())):
            attribute = isinstance(node, ast.Attribute) and node.attr == "path" and \
                isinstance(node.value, ast.Name) and node.value.id == "sys"
            imported = isinstance(node, ast.ImportFrom) and node.module == "sys" and \
                any(alias.name == "path" for alias in node.names)
            if attribute or imported:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not found, f"sys.path used outside tests/: {', '.join(found)}"


def imported_names(path) -> set[str]:
    """Every module name `path` imports, at module level or inside functions (absolute names)."""
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
    return found


def imports_of(path) -> set[str]:
    """The project modules `path` imports, at module level or inside functions (absolute names)."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in LIBRARY}
    return {name for name in imported_names(path) if name in modules and name != module}


PROGRAMS = [REPO / "distill" / "cli.py", *REPO.glob("distill/programs/*.py")]  # parse flags, hand on typed jobs


def takes_parsed_flags(function) -> bool:
    """A parameter named `args` (not `*args`) or annotated as argparse's Namespace."""
    params = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
    return any(p.arg == "args" or (p.annotation is not None and "Namespace" in ast.unparse(p.annotation))
               for p in params)


@pytest.mark.parametrize("path", [p for p in LIBRARY if p not in PROGRAMS], ids=lambda p: str(p.relative_to(REPO)))
def test_the_library_never_sees_argparse(path):
    """Programs parse their flags and build typed jobs (teacher_stage.LabelJob, config.Config); the
    library takes those, so it never learns how a program spells its flags."""
    assert "argparse" not in {name.split(".")[0] for name in imported_names(path)}, "imports argparse"
    found = [f"{node.name} (line {node.lineno})" for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and takes_parsed_flags(node)]
    assert not found, f"takes parsed flags (args / a Namespace): {', '.join(found)}: take a typed job instead"


def test_the_library_imports_no_benchmark_or_program_shim():
    """benchmarks/ and tools/ build on distill/ and teacher_logits/, never the other way round."""
    outside = {f"{path.relative_to(REPO)}: {name}" for path in LIBRARY for name in imported_names(path)
               if name.split(".")[0] in ("benchmarks", "tools", "tests")}
    assert not outside, f"the library imports what builds on it: {sorted(outside)}"


def test_no_import_cycle_and_the_store_imports_no_model_code():
    """Lazy imports count: a cycle broken by importing inside a function is still a cycle."""
    graph = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): imports_of(p)
             for p in LIBRARY}
    for module, imported in graph.items():
        if module.startswith("teacher_logits"):
            assert not {m for m in imported if not m.startswith("teacher_logits")}, module
        # the entry points: the launcher's (distill/train_student.py) and `python -m distill.models`
        program = module.startswith("distill.programs") or module in ("distill.train_student", "distill.models.__main__")
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


def test_the_data_path_runs_downhill():
    """The data layer hands the loss what it needs and never imports it: Batch and SparseTarget
    live below both (distill/batch.py)."""
    graph = {".".join(p.relative_to(REPO).with_suffix("").parts): imports_of(p) for p in LIBRARY}
    for data_module in ("distill.replay", "distill.student_data", "distill.device_replay", "distill.batch"):
        assert "distill.loss" not in graph[data_module], f"{data_module} imports the loss"


def test_the_view_size_rule_has_one_definition():
    """A recipe's sizes (native_size, any_size) are read only by distill/recipes.py: everyone else
    asks recipes.view_size, so the stages cannot disagree on a view's size."""
    readers = [f"{path.relative_to(REPO)}:{node.lineno}"
               for path in [*LIBRARY, *sorted(REPO.glob("benchmarks/*.py")), *sorted(REPO.glob("tools/*.py"))]
               if path != REPO / "distill" / "recipes.py"
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Attribute) and node.attr in ("native_size", "any_size")]
    assert not readers, f"the view-size rule re-written at {', '.join(readers)}: use distill.recipes.view_size"


def test_library_functions_are_not_named_like_tests():
    """pytest collects test_* names: a library function so named reads as a test."""
    named = [f"{path.relative_to(REPO)}:{node.name}" for path in LIBRARY
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith(("test_", "Test"))]
    assert not named, f"library names that look like tests: {named}"


def test_loss_mode_is_interpreted_in_one_place():
    """Only distill/loss.py's MODES table says what a loss.mode means: no other module compares
    the mode to a literal."""
    compared = [f"{path.relative_to(REPO)}:{node.lineno}" for path in LIBRARY if path.name != "loss.py"
                for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Compare) and any(isinstance(side, ast.Attribute) and side.attr == "mode"
                                                         and "loss" in ast.unparse(side)
                                                         for side in [node.left, *node.comparators])]
    assert not compared, f"loss.mode compared outside distill/loss.py: {compared}"


def conftest_problems(source: str, max_lines: int = 200) -> list[str]:
    """What keeps a conftest.py from being fixtures and hooks only: its length, and each top-level
    function or class that is neither a `pytest.fixture` nor a `pytest_*` hook."""
    def fixture(decorator) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        return ast.unparse(target) in ("pytest.fixture", "fixture")

    lines = len(source.splitlines())
    problems = [f"{lines} lines (at most {max_lines - 1})"] if lines >= max_lines else []
    return problems + [f"{node.name} (line {node.lineno}) is no fixture or hook: move it to tests/helpers.py"
                       for node in ast.parse(source).body
                       if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                       and not node.name.startswith("pytest_") and not any(map(fixture, node.decorator_list))]


def test_conftest_holds_only_fixtures_and_hooks():
    """tests/conftest.py stays short and does one job, fixtures and hooks; the helpers tests share
    are defined once in tests/helpers.py (tests/disks.py for mounted disks)."""
    assert conftest_problems((REPO / "tests" / "conftest.py").read_text()) == []
