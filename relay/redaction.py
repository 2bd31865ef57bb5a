"""What must never be shown: the secrets relay knows of, and URL tokens in request paths.

``rule_secrets`` lists every secret the rules hold; ``settings_secrets`` those of the process
settings. ``Secrets`` scrubs them out of text and follows the rules in force, so a reload that
brings a new secret is covered from its first line. The log formatter (``relay.logs``) and the
refused-request log (``relay.rejected``) both use these.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import SecretStr

from relay.providers.common import REDACTED, is_sensitive_key
from relay.routing.model import EmailDestination, Rules, SlackDestination, WebhookDestination
from relay.settings import Settings

# Shorter "secrets" are not credible ones, and scrubbing them would mangle every line.
MIN_SECRET_LENGTH = 4
# What stands in for a URL token in a path.
MASK = "****"
_HOOKS = "/hooks/"
_KEEP_SEGMENTS = frozenset({"callback"})
# Header values shorter than this are scrubbed only when the header's name says it holds a
# credential ("Accept: */*" is not a secret); a long value may be one whatever its name.
_HEADER_VALUE_MIN = 8
_CREDENTIAL_WORDS = ("auth", "key", "secret", "token", "signature", "password", "cookie")


def _value(secret: SecretStr | str | None) -> str | None:
    if secret is None:
        return None
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


def _words(value: str, minimum: int) -> Iterator[str]:
    """``value`` and its parts: "Bearer abc..." is shown as "abc..." as often as whole."""
    yield value
    for word in value.split():
        if len(word) >= minimum and word != value:
            yield word


def _signing(secret: SecretStr | None) -> Iterator[str | None]:
    """A signing secret as it may be shown: several space-separated whsec_ secrets (a key
    rotation), each also without its prefix (the base64 key alone)."""
    value = _value(secret)
    if value:
        for part in _words(value, MIN_SECRET_LENGTH):
            yield part
            yield part.removeprefix("whsec_")


def _webhook(dest: WebhookDestination) -> Iterator[str | None]:
    yield from _signing(dest.secret)
    for name, header in dest.headers.items():
        lowered = name.lower()
        credential = is_sensitive_key(name) or any(w in lowered for w in _CREDENTIAL_WORDS)
        if credential or len(header) >= _HEADER_VALUE_MIN:
            yield from _words(header, _HEADER_VALUE_MIN)


def _slack(dest: SlackDestination) -> Iterator[str | None]:
    yield _value(dest.token)
    url = _value(dest.webhook_url)
    if url:
        yield url
        # /services/T.../B.../<secret>: the path, and its last segment above all, is the
        # credential.
        path = urlsplit(url).path
        if path.count("/") > 1:
            yield path
            yield path.rstrip("/").rsplit("/", 1)[-1]


def rule_secrets(rules: Rules) -> list[str]:
    """Every secret the rules hold: sources' secrets, tokens and API keys; SMTP passwords;
    webhook signing secrets and header values; Slack tokens and webhook URLs."""
    found: list[str | None] = []
    for source in rules.sources.values():
        found += [*_signing(source.secret), _value(source.token), _value(source.api_key)]
    if rules.smtp is not None:
        found.append(_value(rules.smtp.password))
    for dest in rules.destinations.values():
        if isinstance(dest, WebhookDestination):
            found.extend(_webhook(dest))
        elif isinstance(dest, SlackDestination):
            found.extend(_slack(dest))
        elif isinstance(dest, EmailDestination):
            found.append(_value(dest.password))
    return _usable(found)


def database_passwords(url: str) -> list[str]:
    """The password a database URL carries (as written and decoded; ``?password=`` too)."""
    found: list[str | None] = []
    try:
        parts = urlsplit(url)
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        found += [v for k, v in parse_qsl(parts.query) if k == "password"]
    except ValueError:
        pass
    return _usable(found)


def settings_secrets(settings: Settings) -> list[str]:
    """The process's own secrets: the admin token and the database password."""
    return _usable([_value(settings.admin_token), *database_passwords(settings.db)])


def _usable(found: Iterable[str | None]) -> list[str]:
    return [s for s in dict.fromkeys(found) if s is not None and len(s) >= MIN_SECRET_LENGTH]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` (longest first, so none leaves a tail) replaced."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def longest_first(secrets: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(secrets), key=len, reverse=True))


class Secrets:
    """Fixed secrets plus those of the rules in force (``rules()``, read on every use, so a
    reload is followed at once). ``values()`` is cached until the rules object changes."""

    def __init__(self, fixed: Iterable[str] = (), rules: Callable[[], Rules] | None = None) -> None:
        self._fixed = tuple(fixed)
        self._rules = rules
        self._seen: Rules | None = None
        self._values = longest_first(self._fixed)

    def values(self) -> tuple[str, ...]:
        """Every secret, longest first."""
        if self._rules is not None:
            current = self._rules()
            if current is not self._seen:
                self._values = longest_first([*self._fixed, *rule_secrets(current)])
                self._seen = current
        return self._values

    def scrub(self, text: str) -> str:
        return scrub(text, self.values())


def mask_path(path: str) -> str:
    """A request path as it may be shown: under /hooks/, every segment after the source name
    (a URL token, or whatever a client put there) is masked, except a trailing "callback";
    a query's credential-named values (``?token=``) are masked too."""
    path, sep, query = path.partition("?")
    if path.startswith(_HOOKS):
        parts = path[len(_HOOKS) :].split("/")
        for i in range(1, len(parts)):
            if parts[i] and not (i == len(parts) - 1 and parts[i] in _KEEP_SEGMENTS):
                parts[i] = MASK
        path = _HOOKS + "/".join(parts)
    if not sep:
        return path
    return f"{path}?{_mask_query(query)}"


def _mask_query(query: str) -> str:
    out = []
    for item in query.split("&"):
        key, eq, _ = item.partition("=")
        out.append(f"{key}={MASK}" if eq and is_sensitive_key(unquote(key)) else item)
    return "&".join(out)
