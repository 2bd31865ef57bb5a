"""Render knows providers only by what they declare, handed in by the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import relay.render
from relay.providers import default_providers
from relay.runtime import provider_names

RENDER = Path(relay.render.__file__).resolve().parent
PROVIDERS = default_providers()


def _imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports (``from x import y`` gives ``x`` and ``x.y``)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", sorted(RENDER.glob("*.py")), ids=lambda p: p.name)
def test_render_imports_no_provider_module(path: Path) -> None:
    bad = [
        name
        for name in _imported_modules(path)
        if name == "relay.providers" or name.startswith("relay.providers.")
    ]
    assert bad == [], f"{path.name} imports {bad}: providers reach render through ProviderNames"


@pytest.mark.parametrize("name", sorted(PROVIDERS))
def test_every_provider_declares_a_display_name(name: str) -> None:
    provider = PROVIDERS[name]
    assert isinstance(provider.display_name, str)
    assert provider.display_name.strip() == provider.display_name != ""
    assert isinstance(provider.alerts, bool)
    # Phrases are for alerts only; an alert provider may still have none.
    assert provider.alerts or not provider.alert_phrases
    assert provider_names(PROVIDERS).display(name) == provider.display_name


def test_the_runtime_copies_every_declaration() -> None:
    names = provider_names(PROVIDERS)
    assert set(names.providers) == set(PROVIDERS)
    account = names.alert("goapi-account")
    assert account is not None and account.display_name == "GoAPI account"
    assert account.alert_phrases["mj_bot_banned"] == "Midjourney bot banned"
    assert [n for n in PROVIDERS if names.alert(n) is not None] == ["goapi-account"]
