"""driftline: event-driven model monitoring and retraining."""
__version__ = "0.1.0"
