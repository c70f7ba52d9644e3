"""benchmarks/publish.py: a benchmark's figures go into a bundle's metadata eval_metrics (only that
value of the file changes) and README block, with their source, date and machine."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import publish as P  # noqa: E402


@pytest.fixture()
def bundles(tmp_path):
    """Copies of two real bundles' metadata (one pretty-printed, one with eval_metrics on one line)."""
    for name in ("calf_mri", "thigh_ct_25d"):
        (tmp_path / name / "configs").mkdir(parents=True)
        (tmp_path / name / "docs").mkdir()
        shutil.copy(REPO / "bundles" / name / "configs" / "metadata.json", tmp_path / name / "configs")
        (tmp_path / name / "docs" / "README.md").write_text(f"# {name}\n\nText.\n")
    return tmp_path


@pytest.mark.parametrize("name", ["calf_mri", "thigh_ct_25d"])
def test_only_eval_metrics_changes_and_sources_stay_apart(bundles, name, capsys):
    path = bundles / name / "configs" / "metadata.json"
    # as before publishing existed: figures written by hand, no provenance
    path.write_text(P.splice_eval_metrics(path.read_text(), {"mean_dice_by_hand": 0.889}))
    before_text = path.read_text()
    before = json.loads(before_text)
    start, end, _ = P._value_span(before_text, "eval_metrics")
    P.publish(name, "benchmarks/a.py", {"mean_dice_a": 0.5, "dice_a": {"soleus": 0.4}}, results="benchmarks/results/a.md",
              command="python benchmarks/a.py --publish", date="2030-01-02", machine_text="test box", bundles_dir=bundles)
    text = path.read_text()
    after = json.loads(text)
    assert text[:start] == before_text[:start] and text.endswith(before_text[end:])  # the rest byte for byte
    assert {k: v for k, v in after.items() if k != "eval_metrics"} == {k: v for k, v in before.items() if k != "eval_metrics"}
    metrics = after["eval_metrics"]
    assert metrics["mean_dice_a"] == 0.5 and P.unexplained_figures(metrics) == []
    assert metrics["provenance"]["benchmarks/a.py"] == {"figures": ["mean_dice_a", "dice_a"], "results": "benchmarks/results/a.md",
                                                       "measured": "2030-01-02", "machine": "test box",
                                                       "command": "python benchmarks/a.py --publish"}
    assert "mean_dice_by_hand" not in metrics and "dropping mean_dice_by_hand" in capsys.readouterr().out
    # a second source keeps the first one's figures; republishing a source replaces only its own
    P.publish(name, "benchmarks/b.py", {"mean_dice_b": 0.7}, results="r.md", date="2030-01-03", machine_text="x",
              bundles_dir=bundles)
    P.publish(name, "benchmarks/a.py", {"mean_dice_a2": 0.6}, results="a.md", date="2030-01-04", machine_text="x",
              bundles_dir=bundles)
    metrics = json.loads(path.read_text())["eval_metrics"]
    assert {k for k in metrics if k != "provenance"} == {"mean_dice_b", "mean_dice_a2"}
    with pytest.raises(ValueError, match="already published"):
        P.publish(name, "benchmarks/c.py", {"mean_dice_b": 0.1}, results="c.md", bundles_dir=bundles)


def test_readme_block_replaced_in_place(bundles):
    readme = bundles / "calf_mri" / "docs" / "README.md"
    P.publish("calf_mri", "benchmarks/a.py", {"m": 0.1}, results="a.md", readme="| t | 0.1 |", date="2030-01-02",
              machine_text="box", bundles_dir=bundles)
    first = readme.read_text()
    assert "<!-- published by benchmarks/a.py: begin -->\n| t | 0.1 |" in first and "Measured 2030-01-02 on box" in first
    readme.write_text(first + "\nMore text after.\n")
    P.publish("calf_mri", "benchmarks/a.py", {"m": 0.2}, results="a.md", readme="| t | 0.2 |", date="2030-01-05",
              machine_text="box", bundles_dir=bundles)
    second = readme.read_text()
    assert "0.1 |" not in second and "| t | 0.2 |" in second and second.count("begin -->") == 1
    assert second.endswith("More text after.\n") and second.startswith("# calf_mri\n\nText.\n")


def test_shipped_metadata_figures_all_have_a_source():
    for path in sorted((REPO / "bundles").glob("*/configs/metadata.json")):
        metrics = json.loads(path.read_text()).get("eval_metrics", {})
        if path.parent.parent.name == "gym_photo":
            continue  # its figures come from muscle_pipeline.photo.evaluation, not a benchmarks/ script
        assert P.unexplained_figures(metrics) == [], path
