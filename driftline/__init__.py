"""driftline: event-driven model monitoring and retraining.

The two names a service needs are here, imported on first use so that
``import driftline`` stays light (the base install is only the SDK):

>>> from driftline import PredictionLogger, Settings
>>> PredictionLogger.__module__, Settings.__module__
('driftline.streams.sdk', 'driftline.settings')
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from driftline.lazy import lazy_exports

__version__ = "0.1.0"
__all__ = ["PredictionLogger", "Settings", "__version__"]

# name -> module that defines it
_LAZY = {"PredictionLogger": "driftline.streams.sdk", "Settings": "driftline.settings"}

if TYPE_CHECKING:
    from driftline.settings import Settings
    from driftline.streams.sdk import PredictionLogger

__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
