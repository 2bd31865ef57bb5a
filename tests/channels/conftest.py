from tests.channels.harness import harness, http, store  # noqa: F401
