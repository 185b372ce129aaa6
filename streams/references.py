"""Where the worker finds each model version's reference profile.

Two providers behind one interface (``get``, ``load``, ``knows_model``, ``holdout_metrics``, ``release``,
``on_model_event``):

- :class:`RegistryReferences` reads the model registry. A version's own
  profile is used when the registry has it; an event of a version the
  registry does not know (or with ``baseline='champion'``, every event) is
  compared with the current champion's profile. Profiles are cached; a
  ``models`` event (registered, promoted, rolled back) drops what it may have
  changed, so the next window of that model is measured against the new
  baseline. Unknown models are remembered for ``negative_ttl_s`` only, so a
  model registered without a ``models`` event is still picked up.
- :class:`StaticReferences`: profiles given as dicts or a JSON file, for
  tests and for running without a registry.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from driftline.streams.core.reference import ReferenceProfile
from driftline.streams.records import ModelEvent

log = logging.getLogger(__name__)

BASELINES = ("version", "champion")
# The registry accepts model ids (and versions) of 1-128 characters: a longer one is no model's, and it
# is refused without a query (or a cache entry) per event.
MAX_MODEL_ID = 128


class ReferenceProvider(Protocol):
    def get(self, model_id: str, model_version: str) -> ReferenceProfile | None:
        """The profile to compare this version's windows with, or None (an unknown model)."""
        ...

    def load(self, keys: Iterable[tuple[str, str]]) -> None:
        """Read what is not cached yet of these ``(model_id, version)`` at once (``get`` then finds it)."""
        ...

    def knows_model(self, model_id: str) -> bool:
        """Whether the model has any reference profile at all (labels carry no version)."""
        ...

    def holdout_metrics(self, model_id: str, model_version: str) -> dict[str, float] | None:
        """The version's registered holdout metrics (the performance trigger's reference), or None."""
        ...

    def release(self, model_id: str, model_version: str) -> None:
        """Drop what is cached for an idle version; the next ``get`` loads it again."""
        ...

    def on_model_event(self, event: ModelEvent) -> None:
        """Forget what a registry change may have changed."""
        ...


class RegistryReferences:
    """Reference profiles from the registry (``driftline.retrainer.registry.Registry``), cached.

    >>> import tempfile, numpy as np
    >>> from driftline.retrainer.registry import ArtifactStore, Lineage, Registry
    >>> d = tempfile.mkdtemp()
    >>> reg = Registry(f"sqlite:///{d}/r.db", ArtifactStore(d))
    >>> profile = ReferenceProfile.build("m", "1", {"x": np.arange(100.0)}, {})
    >>> _ = reg.register("m", lineage=Lineage(), reference_profile=profile.to_dict())
    >>> refs = RegistryReferences(reg)
    >>> refs.get("m", "1").n, refs.get("m", "7"), refs.get("other", "1")
    (100, None, None)
    >>> _ = reg.promote("m", "1")
    >>> refs.on_model_event(ModelEvent("promoted", "m", "1", 0, alias="champion"))
    >>> refs.get("m", "7").model_version  # a version the registry does not know: the champion's profile
    '1'
    """

    def __init__(
        self,
        registry: Any,
        *,
        baseline: str = "version",
        negative_ttl_s: float = 30.0,
        champion_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
        self.registry = registry
        self.baseline = baseline
        self.negative_ttl_s = negative_ttl_s
        self.champion_ttl_s = champion_ttl_s
        self._clock = clock
        self._own: dict[tuple[str, str], ReferenceProfile] = {}  # immutable once registered
        self._champion: dict[str, tuple[ReferenceProfile | None, float]] = {}
        self._missing: dict[tuple[str, str], float] = {}
        self._models: dict[str, tuple[bool, float]] = {}
        self._holdout: dict[tuple[str, str], dict[str, float] | None] = {}

    def get(self, model_id: str, model_version: str) -> ReferenceProfile | None:
        if self.baseline == "version":
            own = self._own_profile(model_id, model_version)
            if own is not None:
                return own
        return self._champion_profile(model_id)

    def load(self, keys: Iterable[tuple[str, str]]) -> None:
        """Read the own profiles of the versions not cached yet in one registry read, not one per version.

        A worker meets a thousand versions in its first polls; ``get`` then finds them cached. A version
        the registry has no profile for is left to ``get`` (the champion's profile, or None, remembered for
        ``negative_ttl_s``).

        >>> import tempfile, numpy as np
        >>> from driftline.retrainer.registry import ArtifactStore, Lineage, Registry
        >>> d = tempfile.mkdtemp()
        >>> reg = Registry(f"sqlite:///{d}/r.db", ArtifactStore(d))
        >>> for m in ("a", "b"):
        ...     _ = reg.register(m, lineage=Lineage(),
        ...                      reference_profile=ReferenceProfile.build(m, "1", {"x": np.arange(9.0)}, {}).to_dict())
        >>> refs = RegistryReferences(reg)
        >>> refs.load([("a", "1"), ("b", "1"), ("c", "1")])
        >>> reg.reference_profile = None  # no read per version from here on: both are cached
        >>> refs.get("a", "1").model_id, refs.get("b", "1").model_id
        ('a', 'b')
        """
        if self.baseline != "version":
            return  # every event is compared with its champion's profile: one per model, read by ``get``
        now = self._clock()
        wanted = [
            key
            for key in dict.fromkeys(keys)
            if key not in self._own
            and len(key[0]) <= MAX_MODEL_ID
            and len(key[1]) <= MAX_MODEL_ID
            and now - self._missing.get(key, -math.inf) >= self.negative_ttl_s
        ]
        if not wanted:
            return
        for key, profile in self.registry.reference_profiles(wanted).items():
            self._own[key] = ReferenceProfile.from_dict(profile)
            self._missing.pop(key, None)

    def knows_model(self, model_id: str) -> bool:
        from driftline.retrainer.registry import InvalidNameError, ModelNotFoundError

        if len(model_id) > MAX_MODEL_ID:
            return False  # no registered model has such a name, and it would not be worth caching
        cached = self._models.get(model_id)
        if cached is not None and (cached[0] or self._clock() - cached[1] < self.negative_ttl_s):
            return cached[0]
        try:
            known = bool(self.registry.list_versions(model_id))
        except (InvalidNameError, ModelNotFoundError):  # a name the registry refuses is no model of it
            known = False
        self._models[model_id] = (known, self._clock())
        return known

    def holdout_metrics(self, model_id: str, model_version: str) -> dict[str, float] | None:
        """The version's registered holdout metrics (the performance trigger's reference), if any."""
        from driftline.retrainer.registry import RegistryError

        key = (model_id, model_version)
        if key not in self._holdout:
            try:
                metrics = dict(self.registry.get(model_id, model_version).lineage.holdout_metrics or {})
            except RegistryError:
                metrics = {}
            self._holdout[key] = metrics or None
        return self._holdout[key]

    def release(self, model_id: str, model_version: str) -> None:
        """Drop a version's cached profile (an idle version; the next ``get`` reads it again).

        >>> import tempfile, numpy as np
        >>> from driftline.retrainer.registry import ArtifactStore, Lineage, Registry
        >>> d = tempfile.mkdtemp()
        >>> reg = Registry(f"sqlite:///{d}/r.db", ArtifactStore(d))
        >>> _ = reg.register("m", lineage=Lineage(),
        ...                  reference_profile=ReferenceProfile.build("m", "1", {"x": np.arange(9.0)}, {}).to_dict())
        >>> refs = RegistryReferences(reg)
        >>> first = refs.get("m", "1")
        >>> refs.release("m", "1")
        >>> again = refs.get("m", "1")
        >>> again is not first, again.to_dict() == first.to_dict()
        (True, True)
        """
        self._own.pop((model_id, model_version), None)
        self._holdout.pop((model_id, model_version), None)

    def on_model_event(self, event: ModelEvent) -> None:
        self._champion.pop(event.model_id, None)
        self._models.pop(event.model_id, None)
        for key in [k for k in self._missing if k[0] == event.model_id]:
            del self._missing[key]
        log.info(
            "reference baseline of %s reset by a %s event (version %s)",
            event.model_id,
            event.event,
            event.version,
            extra={"model_id": event.model_id, "event": event.event, "version": event.version},
        )

    def _own_profile(self, model_id: str, model_version: str) -> ReferenceProfile | None:
        from driftline.retrainer.registry import (
            InvalidNameError,
            InvalidVersionError,
            ModelNotFoundError,
            VersionNotFoundError,
        )

        if len(model_id) > MAX_MODEL_ID or len(model_version) > MAX_MODEL_ID:
            return None
        key = (model_id, model_version)
        found = self._own.get(key)
        if found is not None:
            return found
        since = self._missing.get(key)
        if since is not None and self._clock() - since < self.negative_ttl_s:
            return None
        try:
            profile = ReferenceProfile.from_dict(self.registry.reference_profile(model_id, model_version))
        except (InvalidNameError, InvalidVersionError, ModelNotFoundError, VersionNotFoundError):
            self._missing[key] = self._clock()
            return None
        self._own[key] = profile
        self._missing.pop(key, None)
        return profile

    def _champion_profile(self, model_id: str) -> ReferenceProfile | None:
        from driftline.retrainer.registry import CHAMPION, InvalidNameError, ModelNotFoundError

        if len(model_id) > MAX_MODEL_ID:
            return None
        cached = self._champion.get(model_id)
        if cached is not None:
            ttl = self.negative_ttl_s if cached[0] is None else self.champion_ttl_s
            if self._clock() - cached[1] < ttl:
                return cached[0]
        try:
            champion = self.registry.alias(model_id, CHAMPION)
        except (InvalidNameError, ModelNotFoundError):
            champion = None
        profile = None if champion is None else self._own_profile(model_id, champion.version)
        self._champion[model_id] = (profile, self._clock())
        return profile


class StaticReferences:
    """Reference profiles given up front, by ``(model_id, version)`` or by ``model_id`` (any version).

    >>> import numpy as np
    >>> p = ReferenceProfile.build("m", "1", {"x": np.arange(10.0)}, {})
    >>> refs = StaticReferences({("m", "1"): p})
    >>> refs.get("m", "1") is p, refs.get("m", "2"), refs.knows_model("m")
    (True, None, True)
    >>> StaticReferences({"m": p}).get("m", "2") is p
    True
    """

    def __init__(self, profiles: Mapping[Any, ReferenceProfile | Mapping[str, Any]]) -> None:
        self._profiles: dict[Any, ReferenceProfile] = {
            key: p if isinstance(p, ReferenceProfile) else ReferenceProfile.from_dict(p) for key, p in profiles.items()
        }

    @classmethod
    def from_file(cls, path: str | Path) -> StaticReferences:
        """A JSON file holding a list of ``ReferenceProfile.to_dict()`` objects, each for its own version."""
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict):
            data = [data]
        profiles = [ReferenceProfile.from_dict(d) for d in data]
        return cls({(p.model_id, p.model_version): p for p in profiles})

    def get(self, model_id: str, model_version: str) -> ReferenceProfile | None:
        return self._profiles.get((model_id, model_version)) or self._profiles.get(model_id)

    def load(self, keys: Iterable[tuple[str, str]]) -> None:
        """Nothing to read: the profiles were given up front."""
        return None

    def knows_model(self, model_id: str) -> bool:
        return any((k == model_id) or (isinstance(k, tuple) and k[0] == model_id) for k in self._profiles)

    def holdout_metrics(self, model_id: str, model_version: str) -> dict[str, float] | None:
        """None: profiles given up front carry no registered holdout metrics."""
        return None

    def release(self, model_id: str, model_version: str) -> None:
        """Nothing to drop: the profiles were given up front and stay."""
        return None

    def on_model_event(self, event: ModelEvent) -> None:
        return None
