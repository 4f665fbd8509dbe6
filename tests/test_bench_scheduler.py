"""``python -m bench scheduler --tiny`` runs end to end and writes its section."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.__main__ import main


@pytest.mark.bench
@pytest.mark.slow
def test_tiny_scheduler_bench_writes_throughput_ceiling_and_noop_rows(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    main(["scheduler", "--tiny", "--out", str(out)])
    text = out.read_text()
    assert text.count("<!-- section: scheduler -->") == 1
    assert "2 workers × 1 thread over 1 worker × 1 thread" in text
    assert "machine ceiling" in text
    assert "unchanged space (fast path)" in text
