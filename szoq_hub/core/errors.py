"""The one error family of szoq: every failure a user can cause is a `SzoqError` with a hint."""

from __future__ import annotations


class _MessageAndHint:
    """A one-line message plus a one-line hint, shared by errors and by `Interrupted`."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class SzoqError(_MessageAndHint, Exception):
    """Base of all user-facing szoq errors.

    Args:
        message: One line saying what went wrong.
        hint: One line saying what to do about it.
    """


class ModelError(SzoqError):
    """A model reference cannot be resolved or loaded."""


class DependencyError(SzoqError):
    """An optional dependency needed for the requested operation is missing."""


class CalibrationError(SzoqError):
    """Calibration data is missing, empty or too short."""


class ConfigError(SzoqError):
    """An option value is invalid."""


class MaskError(SzoqError):
    """A mask artifact is corrupt, inconsistent or does not match its model."""


class FingerprintMismatch(MaskError):
    """A mask or delta was built for a different model."""


class RegistryError(SzoqError):
    """The local registry cannot be read or written, or a reference does not exist."""


class HubError(SzoqError):
    """A Hub operation failed (not found, auth, race, offline)."""


class TaskError(SzoqError):
    """A task, template or data file is invalid."""


class TrainingError(SzoqError):
    """Fine-tuning cannot start or continue."""


class Interrupted(_MessageAndHint, KeyboardInterrupt):
    """Ctrl-C during a long run, carrying what was kept and how to continue.

    It stays a `KeyboardInterrupt` (not a `SzoqError`), so that code catching `Exception` never
    swallows a user's Ctrl-C; the CLI prints its message and hint and exits with 130.

    Args:
        message: One line saying where the run stopped and what is on disk.
        hint: One line saying how to continue.
    """


def shorten(text: object, limit: int = 80) -> str:
    """A value as it may appear in a one-line message: at most `limit` characters."""
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
