"""What can go wrong in the model registry, as exceptions callers can catch by kind."""

from __future__ import annotations

from driftline.naming import InvalidName


class RegistryError(Exception):
    """Base of every registry error; the message is meant for the operator."""


class InvalidNameError(RegistryError, InvalidName):
    """A model id, alias or tag key that the registry does not accept."""


class InvalidVersionError(RegistryError, ValueError):
    """A version that is not a positive whole number ("1", "2", ...)."""


class ModelNotFoundError(RegistryError, LookupError):
    """No model with this id is registered."""


class VersionNotFoundError(RegistryError, LookupError):
    """The model exists but has no such version."""


class ArtifactNotFoundError(RegistryError, LookupError):
    """The artifact store holds no object with this hash."""


class ArtifactIntegrityError(RegistryError):
    """A stored object no longer hashes to its name: it was altered or truncated."""
