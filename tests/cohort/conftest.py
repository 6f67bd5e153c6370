"""The synthetic cohort the cohort tests share (written once per session: ~10 small studies)."""

from __future__ import annotations

import pytest

# 10 patients, 8 analysable (5 responders), 2 broken (a truncated CT slice, a structure set without the
# target), 1 outcome row of a patient with no study; true cut-off 100 Gy
TEST_SPEC = {"patients": 10, "seed": 4, "n_slices": 28, "matrix": 112, "broken": ("truncated_ct", "no_target"),
             "orphan_outcomes": 1}


@pytest.fixture(scope="session")
def cohort(tmp_path_factory):
    from simulators.cohort import CohortSpec, write_cohort

    return write_cohort(CohortSpec(**TEST_SPEC), tmp_path_factory.mktemp("cohort"))
