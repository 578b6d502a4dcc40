"""The benchmarks behind docs/benchmarks.md: one program per measured claim (store size and
fidelity, teacher-stage and student-step cost, memory, reader scale, replay cost, what
distillation buys, the published CIFAR-10 rows), each writing the command that made it into
its --json file; bench_report.py holds what they share. They take the programs' data and
teacher flags (distill/cli.py) and import the installed packages (`pip install -e .`), so
run one from anywhere as `python benchmarks/bench_NAME.py --help`; `--quick` is the small
run the test suite makes (tests/test_benchmarks.py)."""
