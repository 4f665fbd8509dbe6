"""``python -m bench sampler --tiny`` runs end to end and writes its section."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from bench.__main__ import main, write_section


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_sampler_bench_writes_all_three_parts(tmp_path: Path, capsys):
    out = tmp_path / "RESULTS.md"
    main(["sampler", "--tiny", "--out", str(out)])
    text = out.read_text()
    for heading in ("### 1. Sampler overhead", "### 2. NFE to reach", "### 3. Solvers"):
        assert heading in text
    assert text.count("<!-- section: sampler -->") == 1
    assert "÷ (a)" in text and "dpmpp order 2 (2M)" in text
    assert "edmgrid.sample" in capsys.readouterr().out


def test_writing_a_section_replaces_only_that_section(tmp_path: Path):
    out = tmp_path / "RESULTS.md"
    write_section(out, "sampler", "old sampler")
    write_section(out, "runner", "runner figures")
    write_section(out, "sampler", "new sampler")
    text = out.read_text()
    assert "new sampler" in text and "old sampler" not in text
    assert text.index("new sampler") < text.index("runner figures")


def test_unknown_section_is_an_error(capsys):
    with pytest.raises(SystemExit):
        main(["nope", "--tiny"])
    assert "unknown section" in capsys.readouterr().err


def test_tiny_training_bench_reports_the_throughput_ratio(tmp_path: Path):
    out = tmp_path / "RESULTS.md"
    main(["training", "--tiny", "--out", str(out)])
    text = out.read_text()
    assert "bare PyTorch loop" in text and "≥ 0.95" in text
    assert float(text.split("**")[1]) > 0


@pytest.mark.bench
def test_tiny_gpu_bench_reports_every_ratio_on_the_available_device(tmp_path: Path):
    out = tmp_path / "RESULTS.md"
    main(["gpu", "--tiny", "--out", str(out)])
    text = out.read_text()
    for figure in ("bare PyTorch loop", "bare denoiser calls", "bf16 against fp32", "GPU busy"):
        assert figure in text
    ratios = [float(cell) for cell in text.split("**")[1::2]]
    assert len(ratios) >= 3 and all(r > 0 for r in ratios)
    if not torch.cuda.is_available():
        assert "not applicable (no GPU)" in text and "fit's network on cpu" in text
