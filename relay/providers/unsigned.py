"""What every provider that signs nothing shares: the URL token is the only proof."""

from __future__ import annotations

from relay.errors import VerificationError
from relay.providers.base import Inbound
from relay.providers.common import secrets_equal
from relay.routing.model import SourceConfig


def token_only_problems(label: str, config: SourceConfig) -> list[tuple[str | None, str]]:
    """A URL token is required; a secret is refused because nothing would ever check it."""
    problems: list[tuple[str | None, str]] = []
    if config.token is None:
        problems.append(
            ("token", f"is required: {label} signs nothing, the URL token is the only proof")
        )
    if config.secret is not None:
        problems.append(("secret", f"is not used by {label}: put the token in the URL instead"))
    return problems


def require_token(label: str, inbound: Inbound) -> None:
    """Check the URL token again, in constant time.

    The endpoint has already compared it; checking here too keeps an adapter safe when it is
    called some other way, and refuses a source that somehow has no token rather than leaving
    it open.
    """
    token = inbound.config.token
    if token is None:
        raise VerificationError(f"source: {label} needs a token in its URL")
    if not secrets_equal(token.get_secret_value(), inbound.path_token):
        raise VerificationError("token does not match")


class TokenOnly:
    """The verification half of a provider that signs nothing, for its adapter to inherit:
    the URL token is required, checked again in constant time, and a secret is refused."""

    display_name: str

    def check_source(self, config: SourceConfig) -> list[tuple[str | None, str]]:
        """A URL token is required; a secret is refused because nothing would ever check it."""
        return token_only_problems(self.display_name, config)

    def authenticate(self, inbound: Inbound) -> None:
        """Nothing is signed: the URL token, checked again in constant time."""
        require_token(self.display_name, inbound)
