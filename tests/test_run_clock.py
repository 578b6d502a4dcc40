"""The trainer's clock (distill/run_log.py): a run stopped and continued leaves the pause out."""
import json
import os
import signal
import subprocess
import sys
import time

from helpers import REPO, tiny_scratch


def test_a_stopped_and_continued_run_leaves_the_pause_out_of_its_clock(tmp_path):
    """SIGSTOP for 8 s mid-run, then SIGCONT (as long runs here are paused for timings): the
    run's clock (evals.jsonl wall_s, metrics.json train_wall_s) leaves the pause out, while its
    steps' timestamps show it (distill/run_log.py's clock thread)."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(REPO / "distill/train_student.py"), *tiny_scratch(), "data.test_limit=32",
           "train.batch_size=16", "train.max_steps=null", "train.epochs=6", "train.log_every=1", f"output.dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = out / "train_log.jsonl"
        deadline = time.time() + 240
        while not (log.is_file() and len(log.read_text().splitlines()) >= 5) and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(8)
        proc.send_signal(signal.SIGCONT)
        assert proc.wait(timeout=300) == 0
    finally:
        proc.kill()
    stamps = [json.loads(line)["time"] for line in log.read_text().splitlines()]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) >= 8  # the steps' own timestamps show the pause
    steps_span = stamps[-1] - stamps[0]
    wall = json.loads((out / "metrics.json").read_text())["train_wall_s"]
    # without the pause: the steps' span less ~8 s (within a second), plus the first step and the final evaluation
    assert wall < steps_span - 5, (wall, steps_span)
    assert json.loads((out / "evals.jsonl").read_text().splitlines()[-1])["wall_s"] < steps_span - 5
