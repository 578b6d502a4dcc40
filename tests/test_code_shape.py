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
