"""A job killed part-way (SIGKILL, not a Python exception), then resumed: every row exactly once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import tokenloom as tl
from tests.helpers import write_captions
from tokenloom.pipelines.config import pipeline_from_config

ROOT = Path(__file__).resolve().parents[3]

YAML = """
name: killable
imports: [tests.helpers]
source: {{type: io/read_parquet, path: {src}}}
nodes:
  slow: {{type: test/slow, inputs: [source], seconds: 0.15}}
sink: {{type: io/write_parquet, input: slow, path: {out}, batch_size: 4}}
"""


def run_killed_then_resumed(tmp_path: Path, executor: str, extra_env: dict[str, str] | None = None) -> None:
    write_captions(str(tmp_path / "in"), files=4, rows=20, row_group_size=4)  # 80 rows, 20 fragments
    out = tmp_path / "out"
    config = tmp_path / "killable.yaml"
    config.write_text(YAML.format(src=tmp_path / "in", out=out))
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", **(extra_env or {})}
    cmd = [sys.executable, "-m", "tokenloom.pipelines.cli", "run", str(config), "--executor", executor,
           "--allow-module", "tests.helpers", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            done = len(list((out / "_manifest").glob("*.json"))) if (out / "_manifest").exists() else 0
            if done >= 3 or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the process and everything it started
        proc.wait()
    committed = len(tl.read_output(str(out)))
    assert 0 < committed < 80, committed

    pipeline = pipeline_from_config(config, allow_modules=["tests.helpers"])
    report = pipeline.run(executor="local", resume=True, progress=False)
    ids = tl.read_output(str(out)).column("row_id").to_pylist()
    assert len(ids) == len(set(ids)) == 80, (len(ids), len(set(ids)))
    assert report.rows_skipped == committed and report.rows_written == 80 - committed
    assert report.reconciles


def test_local_job_killed_then_resumed(tmp_path):
    run_killed_then_resumed(tmp_path, "local")
