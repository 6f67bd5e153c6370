"""Simulated world for tests and rehearsal.

- ``simulators.phantoms``: synthetic patients (CT + RT Structure Set + ground truth), patient motion between
  scans, needles and seeds rendered into CT, and a catalogue of named cases (``python -m simulators.phantoms``).
- ``simulators.applicator``: the SGP/1 applicator's device side (``python -m simulators.applicator``).

Everything here keeps ground truth, so the navigator's answers can be checked against what really happened.
"""
