"""The procedure's journal (hash-chained ``session.jsonl``) and its state machine (``Session``: states,
preconditions, journal-before-action, resume by replay).
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "Journal": "journal",
    "Session": "controller", "State": "controller", "SessionStateError": "controller", "replay": "controller",
})
