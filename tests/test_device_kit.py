"""The GPU kit (tools/device/): shell syntax, prepare.sh's size guard, and the helper that reads
rates, plans stage 2 and makes a cut run's weights loadable. Cheap: no training, no download."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "tools" / "device"
STRUCTURES = json.loads((REPO / "bundles" / "lower_limb_35" / "configs" / "inference.json").read_text())["structures"]

LOG = """\
[kit 10:00:00 +0s] stage 1: start (budget left 470s)
2026-12-06 10:00:20,000 - muscle_pipeline.training_loop - INFO - stage 1: iteration 50/100 loss 3.5000 (1 s)
2026-12-06 10:00:21,500 - muscle_pipeline.training_loop - INFO - stage 1: iteration 100/100 loss 2.0000 (4 s)
2026-12-06 10:00:40,000 - muscle_pipeline.training_loop - INFO - stage 2 soleus patch (44, 40, 64): iteration 10/10 loss 1.5 (2 s)
2026-12-06 10:00:43,000 - muscle_pipeline.training_loop - INFO - stage 2 popliteus patch (20, 20, 24): iteration 10/10 loss 1.9 (1 s)
"""


def kit(*args, **kw):
    return subprocess.run([sys.executable, str(KIT / "ll35_kit.py"), *args], capture_output=True, text=True, **kw)


def test_scripts_parse():
    for script in ("prepare.sh", "train_lower_limb_35.sh"):
        subprocess.run(["bash", "-n", str(KIT / script)], check=True)


def test_prepare_size_guard():
    env = {**os.environ, "MAX_MIB": "0"}
    over = subprocess.run(["bash", str(KIT / "prepare.sh"), "--size-only"], capture_output=True, text=True, env=env)
    assert over.returncode == 1 and "FAIL" in over.stderr and "travels:" in over.stdout
    env["MAX_MIB"] = "100000"
    ok = subprocess.run(["bash", str(KIT / "prepare.sh"), "--size-only"], capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    tree_mib = float(ok.stdout.split("travels: ")[1].split(" MiB")[0])
    assert tree_mib > 1  # the tracked files were counted


def test_rates_and_plan(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(LOG)
    out = kit("rates", str(log), "--tsv", str(tmp_path / "rates.tsv"))
    assert out.returncode == 0, out.stderr
    assert "stage 1: 1 network(s), 100 iterations in 4 s of training loop: 25.00 it/s" in out.stdout
    rows = [r.split("\t") for r in (tmp_path / "rates.tsv").read_text().splitlines()]
    assert rows[0][:6] == ["network", "iterations", "planned", "loop_s", "it_per_s", "wall_s"]
    assert [r[0] for r in rows[1:]] == ["stage1", "soleus", "popliteus"]
    assert rows[2][5] == "18.5" and rows[3][5] == "3.0"  # seconds since the previous network finished
    # stage 1: 0.04 s/it; 35 muscles at ratio 35 -> 1.4 s per iteration of all; 20 s start-up;
    # (600 - 20 - 35 * 2) * 0.5 / 1.4 = 182
    plan = kit("plan-stage2", str(log), "--remaining", "600", "--stage1-wall", "24", "--ratio", "35",
               "--overhead", "2", "--safety", "0.5", "--min", "10", "--max", "1000")
    assert plan.returncode == 0, plan.stderr
    assert int(plan.stdout) == 182
    short = kit("plan-stage2", str(log), "--remaining", "30", "--stage1-wall", "24", "--min", "10")
    assert int(short.stdout) == 10  # nothing fits: the minimum, and the budget's timeout cuts it


def test_finish_makes_a_cut_run_loadable(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "stage1.pt")
    torch.save({"w": torch.zeros(2)}, tmp_path / "stage2_soleus.pt")
    (tmp_path / "stage2_popliteus.pt").write_bytes(b"PK\x03\x04cut")  # killed while saving
    (tmp_path / "cascade.json").write_text(json.dumps({"priors": {}, "untrained": ["sartorius"], "patch_sizes": {}}))
    out = kit("finish", str(tmp_path), "--bundle-config",
              str(REPO / "bundles" / "lower_limb_35" / "configs" / "inference.json"))
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "stage2_popliteus.pt").exists()
    meta = json.loads((tmp_path / "cascade.json").read_text())
    missing = [m for m in STRUCTURES if m not in ("soleus", "sartorius")]
    assert meta["untrained"] == ["sartorius"] + missing and meta["unfinished"] == missing
    assert json.loads((tmp_path / "cascade.trainer.json").read_text())["untrained"] == ["sartorius"]
    summary = json.loads((tmp_path / "kit_summary.json").read_text())
    assert summary["stage1"] and summary["stage2_finished"] == ["soleus"]
    assert summary["removed_unloadable"] == ["stage2_popliteus.pt"]
