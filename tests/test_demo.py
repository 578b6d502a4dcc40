"""The README's main command, tools/demo.py, end to end on a shrunken budget: every stage
runs as a real program (two teachers, an ensemble store over every training image, kd and
scratch students, evaluation), and the table and closing lines say what happened."""
import json
import os
import subprocess
import sys

from helpers import REPO


def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "tools/demo.py", "--out", str(out), "--labelled", "40", "--teachers", "2",
           "--teacher-steps", "2", "--logit-epochs", "1", "--student-steps", "3", "--launcher", "python"]
    env = {"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # the store covers every training image (1,347), labelled by both teachers
    manifest = json.loads((out / "store/manifest.json").read_text())
    assert manifest["complete"] and manifest["settings"]["dataset"]["size"] == 1347
    assert len(manifest["settings"]["teacher"]["members"]) == 2
    # the scratch student saw only the 40 labelled images, the kd student the whole store
    scratch = (out / "student_scratch/config.yaml").read_text()
    assert "limit: 40" in scratch and "mode: scratch" in scratch
    # the table holds both teachers and both students, and the closing line reports their gap
    models = json.loads((out / "eval/metrics.json").read_text())["models"]
    assert set(models) == {"teacher0", "teacher1", "student_kd", "student_scratch"}
    gap = models["student_kd"]["top1"] - models["student_scratch"]["top1"]
    assert f"{gap:+.2f} points from distillation" in proc.stdout
    for name in models:
        assert f"| {name} " in proc.stdout or f"| {name}|" in proc.stdout
    assert "40 of the 1347 training images have labels" in proc.stdout


def test_student_launchers_take_free_ports_of_their_own():
    """Two demos (or a demo beside another launcher run) on one machine: each student run gets a
    free rendezvous port, not the fixed 29500/29501 that another run may hold."""
    import socket

    from tools.demo import student_launchers

    held = []
    for port in (29500, 29501):  # held here for the test, as another run would
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", port))
            held.append(s)
        except OSError:
            s.close()  # held by someone else already: as good for the test
    try:
        launchers = student_launchers("deepspeed", sys.executable, 2)
        ports = [int(cmd[cmd.index("--master_port") + 1]) for cmd in launchers]
        assert len(set(ports)) == 2 and not set(ports) & {29500, 29501}
        for port in ports:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))  # free
    finally:
        for s in held:
            s.close()
    assert student_launchers("python", sys.executable, 2) == [[sys.executable]] * 2
