"""The main job end to end: scripts/demo.py runs every stage through its script, at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline_and_resumes(tmp_path):
    out = tmp_path / "demo"
    command = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out), "--size", "32", "--iters", "3",
               "--steps", "4", "--images", "3", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    # Every stage left its product, and the random weights are said everywhere.
    assert "RANDOM" in first.stdout
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["random_weights"] is True and "random" in report["weights"]
    assert report["images"], "the report evaluated no held-out image"
    for name in ("index.html", "grid.png", "tsne.png"):
        assert (out / "report" / name).is_file()
    assert "RANDOM" in (out / "report" / "index.html").read_text().upper()
    assert (out / "run" / "checkpoints" / "best.safetensors").is_file()
    assert (out / "export" / "student.onnx").is_file()
    assert list((out / "export").glob("*_stylized.png"))
    assert str(out / "report" / "index.html") in first.stdout

    # Rerunning resumes: no teacher target is recomputed and training is already complete.
    targets = {p: p.stat().st_mtime_ns for p in (out / "targets" / "targets").rglob("*.png")}
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "targets" / "targets").rglob("*.png")} == targets
