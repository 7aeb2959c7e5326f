"""The search spec and the harness spec share their validation (hwloop.search._validate): same rule, same line."""

from __future__ import annotations

import math

import pytest

from hwloop.errors import SearchError
from hwloop.search.harness_spec import HarnessSpec
from hwloop.search.spec import SearchSpec

HARNESS = {"name": "h", "devices": ["asic-tpu32"], "targets": [0.5], "seeds": [0],
           "task": {"task": "digits", "holdout": 200, "pretrain_epochs": 1}, "methods": [{"name": "l1l2"}]}


def _errors(schedule: dict) -> tuple[str, str]:
    msgs = []
    for build in (lambda: SearchSpec.from_dict({"name": "s", "schedule": schedule}),
                  lambda: HarnessSpec.from_dict({**HARNESS, "schedule": schedule})):
        with pytest.raises(SearchError) as ei:
            build()
        msgs.append(str(ei.value))
    return msgs[0], msgs[1]


@pytest.mark.parametrize("schedule, line", [
    ({"lr": math.inf}, "[schedule] lr=inf must be a finite number"),           # the shared type check
    ({"lr": -0.1}, "[schedule] lr=-0.1 must be a finite number > 0"),
    ({"gate_lr": 0.0}, "[schedule] gate_lr=0.0 must be a finite number > 0"),
    ({"weight_decay": -1.0}, "[schedule] weight_decay=-1.0 must be a finite number >= 0"),
    ({"search_epochs": -1}, "[schedule] search_epochs=-1 must be an integer >= 0"),
    ({"max_steps": 0}, "[schedule] max_steps=0 must be an integer >= 1 (or omitted)"),
    ({"epochs": 3}, "[schedule] has unknown key(s) ['epochs']; allowed:"),
])
def test_both_specs_refuse_with_the_same_line(schedule: dict, line: str) -> None:
    search, harness = _errors(schedule)
    assert line in search and line in harness  # after "search spec: " / "harness spec: "
    assert "\n" not in search and "\n" not in harness


def test_the_search_spec_now_checks_max_grid_points_like_the_harness() -> None:
    with pytest.raises(SearchError, match=r"\[predictor\] max_grid_points=1 must be an integer >= 2"):
        SearchSpec.from_dict({"name": "s", "predictor": {"max_grid_points": 1}})
    with pytest.raises(SearchError, match=r"\[cost\] max_grid_points=1 must be an integer >= 2"):
        HarnessSpec.from_dict({**HARNESS, "cost": {"max_grid_points": 1}})
