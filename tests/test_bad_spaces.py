"""Bad input (issue #8): every broken space is exit code 2 with one message that names the file,
the line where known, the field path and the fix; no traceback; nothing in the results directory.

The corpus is ``tests/bad_spaces/*.yaml``; each file states in its header what its message must
contain (``# expect: a; b``) and on which line the problem is (``# line: N``). Cases a file
cannot hold (bytes, pipes, directories) are made here.
"""

from __future__ import annotations

import contextlib
import math
import os
import string
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edmgrid.config.job import JobSpec
from edmgrid.config.space import MAX_JOBS, load_space
from edmgrid.errors import InputError

CORPUS = Path(__file__).parent / "bad_spaces"
ENTRY_POINT = "from edmgrid.cli import main; main()"  # what the installed `edmgrid` script runs
BAD = sorted(CORPUS.glob("*.yaml"))


def header(path: Path) -> tuple[list[str], int | None]:
    """The substrings a corpus file's message must contain, and its line (if stated)."""
    expect: list[str] = []
    line = None
    for text in path.read_text().splitlines():
        if text.startswith("# expect:"):
            expect = [s.strip() for s in text.removeprefix("# expect:").split(";")]
        elif text.startswith("# line:"):
            line = int(text.removeprefix("# line:"))
    return expect, line


def assert_rejected(result: Any, space: Path, results: Path, expect: list[str]) -> None:
    """Exit 2, one message naming the file and saying ``expect``, no traceback, nothing written."""
    assert result.code == 2, result.err + result.out
    assert "Traceback" not in result.out + result.err
    message = result.err.strip()
    assert message.startswith("error: "), message
    assert len(message.splitlines()) == 1, message
    assert str(space) in message
    for part in expect:
        assert part in message, f"{part!r} not in {message!r}"
    assert not results.exists()


def test_corpus_covers_issue_8() -> None:
    assert len(BAD) >= 40
    for path in BAD:
        expect, _ = header(path)
        assert expect, f"{path.name} has no '# expect:' header"


@pytest.mark.parametrize("space", BAD, ids=[p.stem for p in BAD])
def test_bad_space_is_refused_with_a_message_that_says_where_and_how(
    space: Path, results: Path, cli: Callable[..., Any]
) -> None:
    expect, line = header(space)
    result = cli("run", space, "--results", results)
    assert_rejected(result, space, results, expect)
    if line is not None:
        assert f"{space}:{line}:" in result.err


def test_bad_space_is_refused_by_show_too(cli: Callable[..., Any], results: Path) -> None:
    space = CORPUS / "choice_solver.yaml"
    result = cli("show", space)
    assert result.code == 2
    assert "valid choices: euler, heun" in result.err


def test_the_job_limit_is_lifted_by_yes(tmp_path: Path) -> None:
    text = (
        "name: wide\nbase:\n  data: {name: digits}\n  model: {kind: analytic}\n"
        "  metrics: [{name: ode_error}]\n"
        f"grid:\n  model.chunk: [{', '.join(str(i) for i in range(1, MAX_JOBS + 2))}]\n"
    )
    space = tmp_path / "wide.yaml"
    space.write_text(text)
    with pytest.raises(InputError, match="--yes"):
        load_space(space)
    assert len(load_space(space, max_jobs=None).jobs) == MAX_JOBS + 1


def test_huge_grid_is_refused_before_it_is_expanded() -> None:
    # 28 million jobs: building them would take minutes; the count is a product of lengths
    with pytest.raises(InputError, match="28000000 jobs"):
        load_space(CORPUS / "grid_too_large.yaml")


# --- cases a corpus file cannot hold --------------------------------------------------------


def made_space(tmp_path: Path, kind: str) -> tuple[Path, list[str]]:
    """A space path that is broken in the way ``kind`` says, and what its message must say."""
    path = tmp_path / f"{kind}.yaml"
    if kind == "missing":
        return path, ["no such file"]
    if kind == "directory":
        path.mkdir()
        return path, ["is a directory"]
    if kind == "fifo":
        os.mkfifo(path)  # reading it would block forever
        return path, ["not a regular file"]
    if kind == "not_utf8":
        path.write_bytes(b"name: caf\xe9\nbase: {}\n")
        return path, ["not UTF-8", "byte 9"]
    if kind == "utf16":
        path.write_bytes("name: t\n".encode("utf-16"))
        return path, ["not UTF-8", "byte 0"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "directory", "fifo", "not_utf8", "utf16"])
def test_unreadable_space_is_refused(
    kind: str, tmp_path: Path, results: Path, cli: Callable[..., Any]
) -> None:
    space, expect = made_space(tmp_path, kind)
    assert_rejected(cli("run", space, "--results", results), space, results, expect)


def test_file_that_fails_to_read_is_refused(results: Path, cli: Callable[..., Any]) -> None:
    # tests run as root, so chmod 000 does not stop a read; /proc/self/mem fails with EIO
    space = Path("/proc/self/mem")
    try:
        space.read_bytes()
        pytest.skip("/proc/self/mem is readable here")
    except OSError:
        pass
    assert_rejected(cli("run", space, "--results", results), space, results, ["cannot read"])


def test_results_path_that_is_a_file_is_refused(
    tmp_path: Path, cli: Callable[..., Any], quickstart_like: Path
) -> None:
    results = tmp_path / "results"
    results.write_text("not a directory")
    result = cli("run", quickstart_like, "--results", results)
    assert result.code == 2
    assert f"{results}: is not a directory" in result.err
    assert results.read_text() == "not a directory"


def test_file_name_with_markup_brackets_is_printed_verbatim(
    tmp_path: Path, results: Path, cli: Callable[..., Any]
) -> None:
    space = tmp_path / "a[bold]b[link=x]c.yaml"
    space.write_text("name: [\n")
    assert_rejected(cli("run", space, "--results", results), space, results, ["invalid YAML"])


def test_python_tag_is_not_executed(tmp_path: Path, results: Path, cli: Callable[..., Any]) -> None:
    marker = tmp_path / "pwned"
    space = tmp_path / "evil.yaml"
    space.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nbase: {{}}\n")
    assert_rejected(cli("run", space, "--results", results), space, results, ["drop the tag"])
    assert not marker.exists()


def test_installed_entry_point_exits_2_without_traceback(tmp_path: Path) -> None:
    """The honest check: a fresh interpreter running the console script's function."""
    results = tmp_path / "results"
    space = CORPUS / "s_noise_zero.yaml"
    proc = subprocess.run(
        [sys.executable, "-c", ENTRY_POINT, "run", str(space), "--results", str(results)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"{space}:9: sampler.solver.S_noise: Input should be greater than 0" in proc.stderr
    assert not results.exists()


@pytest.fixture
def quickstart_like(tmp_path: Path) -> Path:
    path = tmp_path / "ok.yaml"
    path.write_text(
        "name: ok\nbase:\n  data: {name: toy2d, n: 16}\n  metrics: [{name: ode_error}]\n"
        "  seeds: 0-1\n"
    )
    return path


# --- property-based: validation raises only the tool's own error type ----------------------

PARAMS = ["num_steps", "sigma_min", "sigma_max", "rho", "S_churn", "S_min", "S_max", "S_noise",
          "alpha", "chunk", "n", "std", "mixture", "epsilon_s", "start", "end", "tau"]  # fmt: skip
NAMES = ["digits", "toy2d", "analytic", "heun", "euler", "edm", "vp", "ve", "iddpm", "linear",
         "cosine", "sigmoid", "uniform", "none", "ode_error", "fd_raw", "ring8", "x"]  # fmt: skip
PRESET_NAMES = ["edm", "vp", "table5-cifar10-vp", "nope"]
AXES = ["solver", "timesteps", "schedule", "scaling"]
GRID_KEYS = [f"sampler.{a}.{p}" for a in AXES for p in ("name", "num_steps", "S_churn")] + [
    "seeds", "data.name", "model.chunk", "sampler.preset", "sampler", "metrics", "", "a..b"
]  # fmt: skip

numbers = (
    st.integers(-3, 300)
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
)
scalars = (
    st.none()
    | st.booleans()
    | numbers
    | st.sampled_from(NAMES + PRESET_NAMES)
    | st.text(string.printable, max_size=8)
    | st.from_regex(r"\d{1,12}(-\d{1,12})?(,\d{1,4})?", fullmatch=True)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(["name", "preset", *PARAMS]) | st.text(max_size=4), inner)
    ),
    max_leaves=20,
)
# Configs near valid ones: right keys and choice names, wrong values here and there.
choices = st.dictionaries(
    st.sampled_from(["name", "kind", "preset", *PARAMS]),
    st.sampled_from(NAMES + PRESET_NAMES) | numbers | values,
    max_size=4,
)
presets = st.sampled_from(PRESET_NAMES) | st.lists(st.sampled_from(PRESET_NAMES)) | values
samplers = st.fixed_dictionaries(
    {}, optional={"preset": presets, **{axis: choices | values for axis in AXES}}
)
jobs = st.fixed_dictionaries(
    {},
    optional={
        "data": choices,
        "model": choices,
        "sampler": samplers | values,
        "metrics": st.lists(choices, max_size=2) | values,
        "seeds": scalars,
        "extra": values,
    },
)
spaces = st.fixed_dictionaries(
    {"name": st.sampled_from(["ok", "a.b-c", "../up", ""]) | scalars, "base": jobs | values},
    optional={
        "grid": st.dictionaries(
            st.sampled_from(GRID_KEYS), st.lists(scalars | choices, max_size=5), max_size=3
        )
        | values,
        "zip": st.lists(
            st.dictionaries(st.sampled_from(GRID_KEYS), st.lists(scalars, max_size=3), max_size=2),
            max_size=2,
        )
        | values,
        "description": values,
        "extra": values,
    },
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=jobs | values)
def test_job_validation_raises_only_validation_errors(config: Any) -> None:
    with contextlib.suppress(ValidationError):
        JobSpec.model_validate(config)


def _dump(space: dict[str, Any]) -> str:
    return yaml.safe_dump(space, allow_unicode=True)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(space=spaces)
def test_space_validation_raises_only_spec_errors(space: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(_dump(space))
        try:
            loaded = load_space(path)
        except InputError as e:
            assert str(path) in str(e)
        else:
            assert len({j.job_id for j in loaded.jobs}) == len(loaded.jobs)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(st.sampled_from(list(":-[]{}&*!|>'\"#%@`,?\n\t ab01.")), max_size=60))
def test_arbitrary_text_raises_only_spec_errors(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(text)
        with contextlib.suppress(InputError):
            load_space(path)


def test_nan_is_refused_but_infinite_s_max_is_allowed() -> None:
    base = {"data": {"name": "digits"}, "metrics": [{"name": "ode_error"}]}
    job = JobSpec.model_validate(
        {**base, "sampler": {"solver": {"name": "heun", "S_max": math.inf}}}
    )
    assert job.sampler.solver.S_max == math.inf
    for value in (math.nan, "nan"):
        with pytest.raises(ValidationError, match="NaN"):
            JobSpec.model_validate(
                {**base, "sampler": {"schedule": {"name": "cosine", "start": value}}}
            )
