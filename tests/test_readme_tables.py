"""README's result tables are generated from docs/results/*.json (benchmarks/readme_tables.py):
README holds exactly what the JSONs say, the script's --check notices a figure typed over,
and the docs cite only result files that are in the repository."""
import re
import subprocess
import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import readme_tables  # noqa: E402


def test_readme_tables_equal_the_jsons():
    readme = (REPO / "README.md").read_text()
    assert readme_tables.rendered(readme) == readme, "run python benchmarks/readme_tables.py"


def test_check_fails_on_a_figure_typed_over(tmp_path):
    readme = (REPO / "README.md").read_text()
    kd = readme_tables.read("seed_rows.json")["rows"]["s1_vit"]["kd_top1"]
    edited = tmp_path / "README.md"
    edited.write_text(readme.replace(f"**{kd:.2f}**", "**99.99**", 1))
    script, env = REPO / "benchmarks" / "readme_tables.py", {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(script), "--check", "--readme", str(edited)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 1 and "seed_rows" in proc.stderr
    subprocess.run([sys.executable, str(script), "--readme", str(edited)], check=True, timeout=60, env=env)
    assert edited.read_text() == readme


def test_docs_cite_only_result_files_in_the_repository():
    for doc in ("README.md", "docs/benchmarks.md", "docs/reliability.md"):
        cited = set(re.findall(r"docs/results/[\w.-]+\.\w+", (REPO / doc).read_text()))
        missing = sorted(c for c in cited if not (REPO / c).is_file())
        assert not missing, f"{doc} cites {missing}"
