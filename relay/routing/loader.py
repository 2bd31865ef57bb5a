"""The strict rules loader (README: Rules): read every rules file, report every problem at once.

Each problem reads ``<file>: <key.path>: <message>`` and never contains a secret's value.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from relay.errors import ConfigError
from relay.events import LABEL_NAMES
from relay.routing.envsubst import KeyPath, expand
from relay.routing.model import (
    Destination,
    EmailDestination,
    RetentionConfig,
    Route,
    Rules,
    SmtpSettings,
    SourceConfig,
)
from relay.routing.quiet import InhibitRule
from relay.routing.yamlfile import YamlFileError, read_yaml
from relay.templating import template_problems

_SECTIONS = ("sources", "destinations", "routes", "smtp", "retention", "inhibit")
_SUFFIXES = (".yaml", ".yml")
# Source names and tokens are URL path segments: /hooks/{name}/{token}.
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9_.-]+")
_SEGMENT_RULE = "must use only letters, digits, '_', '.' and '-' (it is part of the URL path)"
# Providers such as APIMart append /callback to our URL, so /hooks/{name}/callback must stay
# unambiguous: a token may not be that word.
_RESERVED_TOKENS = frozenset({"callback"})

_T = TypeVar("_T")


@dataclass(frozen=True)
class LoadedRules:
    """Validated rules, the files they came from, and human lines about defaults that were used."""

    rules: Rules
    files: list[Path]
    defaults_used: list[str]
    # Where each route of ``rules.routes`` was written: (file, index within that file).
    route_origins: list[tuple[str, int]] = field(default_factory=list)


SourceCheck = Callable[[SourceConfig], list[tuple[str | None, str]]]


def load_rules(
    directory: Path,
    env: Mapping[str, str],
    providers: Collection[str],
    checks: Mapping[str, SourceCheck] | None = None,
) -> LoadedRules:
    """Read and merge every ``*.yaml``/``*.yml`` under ``directory``; validate strictly.

    ``env`` supplies ``${VAR}`` values; ``providers`` are the provider names a source may use.
    ``checks`` maps a provider name to its own checks of a source's settings: each problem is
    (key or None for the source itself, message). Raises ``ConfigError`` listing every problem
    found in every file.
    """
    files = find_rule_files(directory)
    merge = _Merge(providers=providers, checks=checks or {})
    for path in files:
        merge.add_file(path, env)
    merge.check_routes()
    merge.resolve_email()
    for file, where, message in template_problems(merge.sources, merge.destinations, merge.routes):
        merge.problem(file, where, message)
    if merge.problems:
        raise ConfigError(merge.in_file_order())
    rules = Rules(
        smtp=merge.smtp[1] if merge.smtp else None,
        retention=merge.retention,
        sources={name: cfg for name, (_, cfg) in merge.sources.items()},
        destinations={name: dest for name, (_, dest) in merge.destinations.items()},
        routes=[route for _, _, route in merge.routes],
        inhibit=[rule for _, _, rule in merge.inhibit],
    )
    return LoadedRules(
        rules=rules,
        files=files,
        defaults_used=merge.defaults_used,
        route_origins=[(file, index) for file, index, _ in merge.routes],
    )


def find_rule_files(directory: Path) -> list[Path]:
    """The rules files under ``directory``: each folder's files by name, then its subfolders.

    Raises ``ConfigError`` if the directory is missing, unreadable or holds no rules file.
    """
    if not directory.is_dir():
        why = "not a directory" if directory.exists() else "no such directory"
        raise ConfigError([f"{directory}: {why}"])
    problems: list[str] = []
    files = _walk(directory, problems, set())
    if not files and not problems:
        problems.append(f"{directory}: no *.yaml or *.yml rules file")
    if problems:
        raise ConfigError(problems)
    return files


def _walk(directory: Path, problems: list[str], seen: set[Path]) -> list[Path]:
    real = directory.resolve()
    if real in seen:  # a symlink loop
        return []
    seen.add(real)
    try:
        # Hidden entries are skipped: a Kubernetes ConfigMap mount holds "..data" and
        # "..<timestamp>" folders with the same files, which would otherwise load twice.
        entries = sorted(
            (e for e in directory.iterdir() if not e.name.startswith(".")), key=lambda e: e.name
        )
    except OSError as exc:
        problems.append(f"{directory}: cannot list: {exc.strerror}")
        return []
    found = [e for e in entries if e.suffix in _SUFFIXES and e.is_file()]
    for entry in entries:
        if entry.is_dir():
            found.extend(_walk(entry, problems, seen))
    return found


def key_path(parts: Sequence[str | int]) -> str:
    """``("routes", 2, "match")`` -> ``routes[2].match``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _key_order(data: object) -> dict[KeyPath, int]:
    """Every key path of a YAML document, numbered in the order the file writes them."""
    order: dict[KeyPath, int] = {}
    stack: list[tuple[KeyPath, object]] = [((), data)]
    while stack:
        path, node = stack.pop()
        if path:
            order[path] = len(order)
        children: list[tuple[KeyPath, object]] = []
        if isinstance(node, dict):
            children = [((*path, str(key)), value) for key, value in node.items()]
        elif isinstance(node, list):
            children = [((*path, n), value) for n, value in enumerate(node)]
        stack.extend(reversed(children))
    return order


def _attribute(key: str) -> str:
    """The model attribute of a rules key ("from" is a Python keyword)."""
    return "from_" if key == "from" else key


def _describe(error: ErrorDetails) -> str:
    """A pydantic error as ops should read it. Never echoes the input (it may be a secret)."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "missing required key"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping of keys to values"
    if kind == "union_tag_invalid":
        return f"unknown type '{ctx['tag']}' (known: {ctx['expected_tags']})"
    if kind == "union_tag_not_found":
        return "missing required key 'type'"
    if kind == "value_error":
        return str(ctx["error"])
    return error["msg"]


@dataclass
class _Merge:
    """The state of one ``load_rules`` call: what has been merged so far and every problem."""

    providers: Collection[str]
    checks: Mapping[str, SourceCheck]
    problems: list[str] = field(default_factory=list)
    # Beside each problem: where it sits (file number, place of its key in the file), so the
    # list reads in file order whichever pass found it.
    places: list[tuple[int, int]] = field(default_factory=list)
    # Per file: every key path in the order the file writes it.
    file_keys: dict[str, dict[KeyPath, int]] = field(default_factory=dict)
    defaults_used: list[str] = field(default_factory=list)
    # name -> (file, validated model); names whose definition was invalid are only in origins.
    sources: dict[str, tuple[str, SourceConfig]] = field(default_factory=dict)
    destinations: dict[str, tuple[str, Destination]] = field(default_factory=dict)
    origins: dict[tuple[str, str], str] = field(default_factory=dict)
    routes: list[tuple[str, int, Route]] = field(default_factory=list)
    inhibit: list[tuple[str, int, InhibitRule]] = field(default_factory=list)
    # Every route's destination names, read even from a route that is otherwise invalid, so
    # one bad key does not hide an unknown destination.
    route_targets: list[tuple[str, int, list[str]]] = field(default_factory=list)
    smtp: tuple[str, SmtpSettings] | None = None
    # The retention: block, and the file that defines it (even if it is invalid).
    retention: RetentionConfig | None = None
    retention_file: str | None = None
    # The keys an smtp: block sets when it could not be validated (a variable unset, a bad
    # value): already reported there, so not "missing" again in each email destination.
    smtp_broken_keys: set[str] = field(default_factory=set)
    destination_adapter: TypeAdapter[Destination] = field(
        default_factory=lambda: TypeAdapter(Destination)
    )

    def problem(self, file: str, path: KeyPath, message: str) -> None:
        self.problems.append(
            f"{file}: {key_path(path)}: {message}" if path else f"{file}: {message}"
        )
        self.places.append((self._file_number(file), self._place(file, path)))

    def _file_number(self, file: str) -> int:
        # Every file is registered by add_file before any problem names it.
        return list(self.file_keys).index(file) if file in self.file_keys else len(self.file_keys)

    def _place(self, file: str, path: KeyPath) -> int:
        """Where ``path`` (or its nearest written parent) sits in ``file``; -1 for the file."""
        keys = self.file_keys.get(file, {})
        for end in range(len(path), 0, -1):
            place = keys.get(path[:end])
            if place is not None:
                return place
        return -1

    def in_file_order(self) -> list[str]:
        """Every problem, file by file, each file's in the order its keys are written."""
        order = sorted(range(len(self.problems)), key=lambda n: (*self.places[n], n))
        return [self.problems[n] for n in order]

    def add_file(self, path: Path, env: Mapping[str, str]) -> None:
        file = str(path)
        self.file_keys[file] = {}
        try:
            data = read_yaml(path)
        except YamlFileError as exc:
            self.problem(file, (), str(exc))
            return
        self.file_keys[file] = _key_order(data)
        if data is None:
            return
        if not isinstance(data, dict):
            self.problem(file, (), "must be a mapping with sources, destinations and routes")
            return
        expansion = expand(data, env)
        for where, message in expansion.problems:
            self.problem(file, where, message)
        # A source, destination or route with a variable that could not be expanded is not
        # validated: its errors would only echo the missing value ("is empty", "unknown ''").
        unexpanded = {where[:2] for where, _ in expansion.problems}
        for where, name in expansion.defaults_used:
            self.defaults_used.append(f"{file}: {key_path(where)} uses the default of ${{{name}}}")
        tree = expansion.value
        if not isinstance(tree, dict):  # never: expand keeps the shape; this narrows the type
            return
        for key in tree:
            if key not in _SECTIONS:
                self.problem(file, (str(key),), f"unknown key (expected {', '.join(_SECTIONS)})")
        if "smtp" in tree:
            if ("smtp",) in {where[:1] for where in unexpanded}:
                self.smtp_broken(tree["smtp"])
            else:
                self.add_smtp(file, tree["smtp"])
        if "retention" in tree and ("retention",) not in {where[:1] for where in unexpanded}:
            self.add_retention(file, tree["retention"])
        self.add_named(file, "sources", tree.get("sources"), self.add_source, unexpanded)
        self.add_named(
            file, "destinations", tree.get("destinations"), self.add_destination, unexpanded
        )
        self.add_routes(file, tree.get("routes"), unexpanded)
        self.add_inhibit(file, tree.get("inhibit"), unexpanded)

    def add_named(
        self,
        file: str,
        section: str,
        items: object,
        add: Callable[[str, str, object], None],
        unexpanded: set[KeyPath],
    ) -> None:
        if items is None:  # "sources:" with everything below commented out
            return
        if not isinstance(items, dict):
            self.problem(file, (section,), "must be a mapping of names to definitions")
            return
        for name, raw in items.items():
            if not isinstance(name, str):
                self.problem(file, (section, str(name)), "name must be a string (quote it)")
                continue
            earlier = self.origins.get((section, name))
            if earlier is not None:
                self.problem(file, (section, name), f"already defined in {earlier}")
                continue
            self.origins[(section, name)] = file
            if (section, name) not in unexpanded:
                add(file, name, raw)

    def validate(
        self,
        file: str,
        path: KeyPath,
        check: Callable[[object], _T],
        raw: object,
        tagged: bool = False,
    ) -> _T | None:
        try:
            return check(raw)
        except ValidationError as exc:
            for error in exc.errors():
                loc = error["loc"]
                # A discriminated union puts the tag first ("webhook", "url"); ops never wrote it.
                if tagged and loc and isinstance(raw, dict) and loc[0] == raw.get("type"):
                    loc = loc[1:]
                self.problem(file, (*path, *loc), _describe(error))
            return None

    def add_source(self, file: str, name: str, raw: object) -> None:
        path: KeyPath = ("sources", name)
        if not _PATH_SEGMENT.fullmatch(name):
            self.problem(file, path, f"name {_SEGMENT_RULE}")
        cfg = self.validate(file, path, SourceConfig.model_validate, raw)
        if cfg is None:
            return
        ok = True
        if cfg.provider not in self.providers:
            known = ", ".join(sorted(self.providers))
            self.problem(
                file, (*path, "provider"), f"unknown provider '{cfg.provider}' (known: {known})"
            )
            ok = False
        if cfg.secret is None and cfg.token is None:
            self.problem(
                file, path, "needs a secret or a token: without either anyone could post events"
            )
            ok = False
        if cfg.secret is not None and not cfg.secret.get_secret_value():
            self.problem(file, (*path, "secret"), "is empty")
            ok = False
        if cfg.token is not None:
            token = cfg.token.get_secret_value()
            if not _PATH_SEGMENT.fullmatch(token):
                self.problem(file, (*path, "token"), _SEGMENT_RULE)
                ok = False
            elif token in _RESERVED_TOKENS:
                self.problem(file, (*path, "token"), f"must not be '{token}' (a reserved path)")
                ok = False
        for index, network in enumerate(cfg.allow_ips):
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                self.problem(
                    file, (*path, "allow_ips", index), f"'{network}' is not an IP address or CIDR"
                )
                ok = False
        check = self.checks.get(cfg.provider)
        for key, message in check(cfg) if check is not None else []:
            self.problem(file, (*path, key) if key else path, message)
            ok = False
        if ok:
            self.sources[name] = (file, cfg)

    def add_destination(self, file: str, name: str, raw: object) -> None:
        check = self.destination_adapter.validate_python
        dest = self.validate(file, ("destinations", name), check, raw, tagged=True)
        if dest is not None:
            self.destinations[name] = (file, dest)

    def add_smtp(self, file: str, raw: object) -> None:
        if raw is None:
            return
        if self.smtp is not None:
            self.problem(file, ("smtp",), f"already defined in {self.smtp[0]}")
            return
        settings = self.validate(file, ("smtp",), SmtpSettings.model_validate, raw)
        if settings is not None:
            self.smtp = (file, settings)
        else:
            self.smtp_broken(raw)

    def add_retention(self, file: str, raw: object) -> None:
        if raw is None:
            return
        if self.retention_file is not None:
            self.problem(file, ("retention",), f"already defined in {self.retention_file}")
            return
        self.retention_file = file
        self.retention = self.validate(file, ("retention",), RetentionConfig.model_validate, raw)

    def smtp_broken(self, raw: object) -> None:
        if isinstance(raw, dict):
            self.smtp_broken_keys.update(str(key) for key in raw)

    def resolve_email(self) -> None:
        """Email destinations inherit the shared smtp: block, then must be complete."""
        shared = self.smtp[1] if self.smtp else None
        if self.smtp and shared and shared.ca_file and not Path(shared.ca_file).is_file():
            self.problem(self.smtp[0], ("smtp", "ca_file"), f"no such file: {shared.ca_file}")
        for name, (file, dest) in list(self.destinations.items()):
            if not isinstance(dest, EmailDestination):
                continue
            path: KeyPath = ("destinations", name)
            if dest.ca_file is not None and not Path(dest.ca_file).is_file():
                self.problem(file, (*path, "ca_file"), f"no such file: {dest.ca_file}")
            resolved = dest.inherit(shared)
            for key, message in resolved.problems():
                if key in self.smtp_broken_keys and getattr(dest, _attribute(key)) is None:
                    continue  # the smtp: block sets it, and its problem is reported there
                self.problem(file, (*path, key) if key else path, message)
            self.destinations[name] = (file, resolved)

    def add_routes(self, file: str, items: object, unexpanded: set[KeyPath]) -> None:
        if items is None:
            return
        if not isinstance(items, list):
            self.problem(file, ("routes",), "must be a list of routes")
            return
        for index, raw in enumerate(items):
            if ("routes", index) in unexpanded:
                continue
            route = self.validate(file, ("routes", index), Route.model_validate, raw)
            if route is not None:
                self.routes.append((file, index, route))
                self.route_targets.append((file, index, list(route.to)))
            elif isinstance(raw, dict):
                to = raw.get("to")
                names = [to] if isinstance(to, str) else to if isinstance(to, list) else []
                self.route_targets.append((file, index, [n for n in names if isinstance(n, str)]))

    def add_inhibit(self, file: str, items: object, unexpanded: set[KeyPath]) -> None:
        if items is None:
            return
        if not isinstance(items, list):
            self.problem(file, ("inhibit",), "must be a list of inhibit rules")
            return
        for index, raw in enumerate(items):
            if ("inhibit", index) in unexpanded:
                continue
            rule = self.validate(file, ("inhibit", index), InhibitRule.model_validate, raw)
            if rule is not None:
                self.inhibit.append((file, index, rule))

    def check_routes(self) -> None:
        """Every destination a route names must exist in some file, and every label it
        matches on be built in or declared by a source (checked after merging)."""
        declared = {label for _, cfg in self.sources.values() for label in cfg.labels}
        valid = ", ".join(sorted(LABEL_NAMES | declared))
        for file, index, route in self.routes:
            for matcher in route.match:
                if matcher.name not in LABEL_NAMES and matcher.name not in declared:
                    self.problem(
                        file,
                        ("routes", index, "match"),
                        f"unknown label '{matcher.name}' in '{matcher}' (valid: {valid})",
                    )
            for name in route.group.by if route.group is not None else []:
                if name not in LABEL_NAMES and name not in declared:
                    self.problem(
                        file,
                        ("routes", index, "group", "by"),
                        f"unknown label '{name}' (valid: {valid})",
                    )
            for name in route.mention.label_names() if route.mention is not None else []:
                if name not in declared:
                    self.problem(
                        file,
                        ("routes", index, "mention"),
                        f"label:{name}: no source declares the label '{name}' "
                        f"(declared: {', '.join(sorted(declared)) or 'none'})",
                    )
        for file, index, rule in self.inhibit:
            for key, matchers in (("when", rule.when), ("mute", rule.mute)):
                for matcher in matchers:
                    if matcher.name not in LABEL_NAMES and matcher.name not in declared:
                        self.problem(
                            file,
                            ("inhibit", index, key),
                            f"unknown label '{matcher.name}' in '{matcher}' (valid: {valid})",
                        )
        known = sorted(name for section, name in self.origins if section == "destinations")
        listed = ", ".join(known) if known else "none defined"
        for file, index, names in self.route_targets:
            for name in names:
                if ("destinations", name) not in self.origins:
                    self.problem(
                        file,
                        ("routes", index, "to"),
                        f"unknown destination '{name}' (known: {listed})",
                    )
