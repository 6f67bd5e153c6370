"""A synthetic cohort for ``navigator cohort``: patients with known implants (some seeds deliberately missing,
so the delivered D90 spreads around a known cut-off), a known dose-response and known hazards, written as a
messy PACS export of DICOM (post-implant CT, RT Structure Set with the target, an RT Plan for some) with
``truth.json`` and ``outcomes.csv`` beside it.

    >>> from simulators.cohort import CohortSpec, write_cohort
    >>> w = write_cohort(CohortSpec(patients=10, seed=1, broken=("truncated_ct",)), "/tmp/cohort")
    >>> w.studies_dir, w.outcomes_path, w.truth["patients"][0]["d90_gy"]

``python -m simulators.cohort write --patients N --seed S --out DIR`` does the same from the shell.
"""

from .model import CohortSpec, SyntheticStudy, make_study
from .writer import WrittenCohort, load_truth, write_cohort

__all__ = ["CohortSpec", "SyntheticStudy", "WrittenCohort", "load_truth", "make_study", "write_cohort"]
