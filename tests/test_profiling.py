"""Stage profiling: seconds and peak memory per stage, accumulated over repeated stages."""
from __future__ import annotations

import mmap
import time

import numpy as np
import pytest

from muscle_pipeline.profiling import StageProfile, current_rss_mb, peak_rss_mb, stage


def test_stages_are_free_and_unrecorded_outside_a_profile():
    with stage("anything"):
        value = 1 + 1
    assert value == 2
    with StageProfile() as profile:
        pass
    assert profile.table() == []


def test_profile_records_seconds_calls_and_the_memory_peak_of_each_stage():
    before = current_rss_mb()
    assert before > 0 and peak_rss_mb() >= before - 2  # the kernel updates its maximum lazily (page granularity)
    with StageProfile(interval_s=0.001) as profile:
        with stage("allocate"):
            # 64 MB of fresh pages, touched: an anonymous mmap, because after other tests malloc
            # may serve even 64 MB from heap pages that are already resident (RSS would not move)
            block = mmap.mmap(-1, 64 * 2**20)
            view = np.frombuffer(block, np.uint8)
            view[:] = 1
            time.sleep(0.02)
        # freed after the stage closed: the stage's closing sample sees the block for sure
        del view
        block.close()
        for _ in range(3):
            with stage("sleep"):
                time.sleep(0.01)
    rows = {r["stage"]: r for r in profile.table()}
    assert list(rows) == ["allocate", "sleep"]
    assert rows["sleep"]["calls"] == 3 and rows["sleep"]["seconds"] >= 0.03
    assert rows["allocate"]["calls"] == 1 and rows["allocate"]["seconds"] >= 0.02
    assert rows["allocate"]["peak_rss_mb"] >= before + 50  # the 64 MB block was seen while alive


def test_nested_stages_must_close_in_order():
    with StageProfile() as profile:
        with stage("outer"):
            with stage("inner"):
                pass
    assert [r["stage"] for r in profile.table()] == ["inner", "outer"]
    with StageProfile() as profile:
        outer = stage("a")
        outer.__enter__()
        inner = stage("b")
        inner.__enter__()
        with pytest.raises(AssertionError, match="closed while"):
            outer.__exit__(None, None, None)
