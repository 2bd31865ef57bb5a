"""Fixtures the e2e tests share with the fault suite: ``make_relay`` (real relay processes in a
home of their own, stopped after the test, their logs free of tracebacks)."""

from tests.faults.conftest import make_relay  # noqa: F401
