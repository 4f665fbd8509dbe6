"""Every ``--json`` output is strict JSON: no NaN or Infinity tokens (RFC 8259)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from conftest import ROOT

from edmgrid.cli import _print_frame
from edmgrid.config.job import JobSpec


def strict(text: str) -> object:
    """json.loads that refuses the NaN, Infinity and -Infinity tokens."""

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_show_json_is_strict_and_reads_back_into_the_same_jobs(cli):
    out = strict(cli("show", ROOT / "spaces" / "solvers.yaml", "--json").out)
    assert isinstance(out, dict)
    for job in out["jobs"]:
        job_id = job.pop("job_id")
        assert job["sampler"]["solver"]["S_max"] == "inf"  # ∞ as the string "inf"
        assert JobSpec.model_validate(job).job_id == job_id


@pytest.mark.parametrize("command", [["axes", "--json"], ["schema"]])
def test_axes_and_schema_json_are_strict(cli, command):
    result = cli(*command)
    assert result.code == 0
    strict(result.out)


def test_table_json_writes_infinities_as_strings_and_nan_as_null(capsys):
    frame = pd.DataFrame({"fd": [1.5, math.inf, -math.inf, math.nan], "solver": list("abcd")})
    _print_frame(frame, "json")
    rows = strict(capsys.readouterr().out)
    assert [r["fd"] for r in rows] == [1.5, "inf", "-inf", None]  # type: ignore[index]
