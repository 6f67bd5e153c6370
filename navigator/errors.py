"""Exception types a caller can act on.

Every message says what was attempted, the offending value with its unit, the allowed range and what to do.
The command line maps these to exit codes (cli-contract.md): ``InputError`` and its subclasses -> 2,
``ClinicalCheckFailed`` -> 3, anything else -> 1.
"""


class NavigatorError(Exception):
    """Base class of every error the navigator raises on purpose."""

    exit_code = 1


class InputError(NavigatorError):
    """Bad input from the user or another system: a file, a series, an option. Exit code 2."""

    exit_code = 2


class DicomSeriesError(InputError):
    """A CT series cannot be turned into one trustworthy volume (wrong modality, missing slices, tilt...)."""


class StructureError(InputError):
    """An RT Structure Set, or a named structure in it, is missing, empty or does not fit the CT."""


class SeedModelError(InputError):
    """Unknown seed model or bad source strength."""


class PlanError(InputError):
    """A plan (plan.json, RT Plan) is malformed or does not fit the images it is used with."""


class RegistrationError(NavigatorError):
    """Registration did not converge or its estimated error is too large to trust. Exit code 2: rescan."""

    exit_code = 2


class ClinicalCheckFailed(NavigatorError):
    """A clinical check failed (e.g. a needle out of tolerance). The result is still written. Exit code 3."""

    exit_code = 3


class DeliveryError(NavigatorError):
    """Seed delivery stopped: device fault, link lost, interlock. The ledger says what left the applicator."""

    exit_code = 1


class JournalError(NavigatorError):
    """The session journal is unreadable or was tampered with."""

    exit_code = 2
