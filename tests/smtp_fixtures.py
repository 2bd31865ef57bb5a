"""pytest fixtures for the test SMTP server (tests/smtp_server.py).

Made available to every test by tests/conftest.py:

    from tests.smtp_fixtures import smtp_server, test_ca  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.smtp_server import SmtpServer, TestCA

SmtpServerFactory = Callable[..., Awaitable[SmtpServer]]


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    """One throwaway CA for the session; its certificate is at ``test_ca.ca_file``
    (what the email channel's ``ca_file`` option should point at)."""
    ca = TestCA()
    ca.write_ca_file(tmp_path_factory.mktemp("smtp-ca") / "ca.pem")
    return ca


@pytest.fixture
async def smtp_server(test_ca: TestCA) -> AsyncIterator[SmtpServerFactory]:
    """``server = await smtp_server(tls_mode="starttls", auth={"u": "p"})``: a started
    SmtpServer (certificate from ``test_ca`` unless ``ca=`` is given); all the servers
    made are stopped at teardown."""
    started: list[SmtpServer] = []

    async def make(**options: Any) -> SmtpServer:
        options.setdefault("ca", test_ca)
        server = await SmtpServer(**options).start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        await server.stop()
