"""Seed delivery (flow 4): the applicator interface the clinical logic needs (``Applicator``; no driver import:
``navigator.wiring`` connects one), the tasks from a plan, the exactly-once run (``Delivery``) and the ledger.
"""

from navigator._lazy import lazy_api

__getattr__, __dir__, __all__ = lazy_api(__name__, {
    "Applicator": "applicator", "ApplicatorError": "applicator", "DeviceStatus": "applicator", "DeviceInfo": "applicator",
    "Delivery": "run", "DeliveryResult": "run", "delivery_tasks": "run", "SeedTask": "run",
    "SeedLedger": "ledger",
})
