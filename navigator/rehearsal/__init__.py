"""The rehearsal: a simulated world (phantom patient, operator, scanner, seed drop) driving the product through
its own commands, and its report.
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "Rehearsal": "driver", "RehearsalOptions": "driver",
    "write_report": "report",
})
