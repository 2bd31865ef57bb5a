"""Process settings: command-line flags, each with an environment variable as its default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr


@dataclass(frozen=True)
class Settings:
    """Everything ``relay serve`` needs besides the rules. See the README for each variable."""

    rules: Path = Path("rules")
    db: str = "sqlite:///relay.db"
    host: str = "127.0.0.1"
    port: int = 8000
    dispatch: bool = True
    max_body: int = 1024 * 1024
    max_depth: int = 64
    lease_seconds: float = 60.0
    concurrency: int = 64
    log_level: str = "info"
    admin_token: SecretStr | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Defaults overridden by RELAY_* variables (and PORT, as platforms set it)."""
        env = os.environ if env is None else env
        base = cls()

        def get(name: str, default: str) -> str:
            return env.get(name) or default

        return cls(
            rules=Path(get("RELAY_RULES", str(base.rules))),
            db=get("RELAY_DB", base.db),
            host=get("RELAY_HOST", base.host),
            port=int(get("RELAY_PORT", get("PORT", str(base.port)))),
            max_body=int(get("RELAY_MAX_BODY", str(base.max_body))),
            max_depth=int(get("RELAY_MAX_DEPTH", str(base.max_depth))),
            lease_seconds=float(get("RELAY_LEASE_SECONDS", str(base.lease_seconds))),
            concurrency=int(get("RELAY_CONCURRENCY", str(base.concurrency))),
            log_level=get("RELAY_LOG_LEVEL", base.log_level),
            dispatch=get("RELAY_DISPATCH", "1").lower() not in ("0", "false", "no", "off"),
        )
