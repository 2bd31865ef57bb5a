"""relay: receive AI-generation callbacks, normalize, route by rules, deliver durably."""

__version__ = "0.1.0"
