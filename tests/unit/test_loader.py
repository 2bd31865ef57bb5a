from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.routing.loader import LoadedRules, load_rules
from relay.routing.matchers import Matcher
from relay.routing.model import WebhookDestination

PROVIDERS = frozenset({"goapi", "piapi", "novita"})
WHSEC = "whsec_cmVsYXktZGV2LXNpZ25pbmctc2VjcmV0"
SHIPPED_RULES = Path(__file__).resolve().parents[2] / "rules"


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load(root: Path, env: Mapping[str, str] | None = None) -> LoadedRules:
    return load_rules(root, env or {}, PROVIDERS)


def problems(root: Path, env: Mapping[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(root, env)
    return caught.value.problems


SOURCE = """
sources:
  goapi:
    provider: goapi
    secret: s3cret
"""

DESTINATION = f"""
destinations:
  billing:
    type: webhook
    url: https://billing.internal/hooks
    secret: {WHSEC}
"""


# -- the happy path -------------------------------------------------------------------------


def test_shipped_rules_load_with_an_empty_environment() -> None:
    loaded = load_rules(SHIPPED_RULES, {}, {"goapi", "piapi", "apimart", "muapi", "novita"})
    assert set(loaded.rules.sources) == {"goapi", "piapi", "apimart", "muapi", "novita"}
    assert set(loaded.rules.destinations) == {"downstream"}
    assert loaded.rules.routes
    assert loaded.defaults_used  # the dev defaults are announced so `relay serve` can warn


def test_merges_files_in_order_including_subfolders(tmp_path: Path) -> None:
    write(tmp_path, "a_sources.yaml", SOURCE)
    write(tmp_path, "b_destinations.yml", DESTINATION)
    write(tmp_path, "c_routes.yaml", "routes:\n  - match: ['status=\"failed\"']\n    to: billing\n")
    write(tmp_path, "sub/a.yaml", "routes:\n  - to: [billing]\n")
    write(tmp_path, "aa/z.yaml", "routes:\n  - {match: 'final=\"true\"', to: [billing]}\n")
    write(tmp_path, "README.md", "not rules")
    write(tmp_path, "notes.txt", "sources: [broken")
    # Hidden folders are skipped: a Kubernetes ConfigMap mount repeats the files in "..data".
    write(tmp_path, "..data/a_sources.yaml", SOURCE)
    write(tmp_path, ".git/x.yaml", "broken: [")
    write(tmp_path, "empty.yaml", "")

    loaded = load(tmp_path)

    assert loaded.files == [
        tmp_path / "a_sources.yaml",
        tmp_path / "b_destinations.yml",
        tmp_path / "c_routes.yaml",
        tmp_path / "empty.yaml",
        tmp_path / "aa/z.yaml",
        tmp_path / "sub/a.yaml",
    ]
    rules = loaded.rules
    assert rules.sources["goapi"].provider == "goapi"
    assert rules.sources["goapi"].secret is not None
    assert rules.sources["goapi"].secret.get_secret_value() == "s3cret"
    assert isinstance(rules.destinations["billing"], WebhookDestination)
    assert [(r.match, r.to) for r in rules.routes] == [
        ([Matcher("status", "=", "failed")], ["billing"]),
        ([Matcher("final", "=", "true")], ["billing"]),
        ([], ["billing"]),
    ]
    assert loaded.defaults_used == []


def test_durations_and_continue_alias(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.yaml",
        f"""
        sources:
          novita: {{provider: novita, token: abc-123, replay_window: 2m, allow_ips: [10.0.0.0/8]}}
        destinations:
          billing:
            type: webhook
            url: http://x
            secret: {WHSEC}
            timeout: 500ms
            retry: {{schedule: [1s, 1m], jitter: 0}}
          slow: {{type: webhook, url: http://y, concurrency: 2, rate: 300/min}}
          slower: {{type: webhook, url: http://z, rate: 0.5}}
        routes:
          - {{to: [billing], continue: true}}
        """,
    )
    rules = load(tmp_path).rules
    assert rules.sources["novita"].replay_window == 120.0
    billing = rules.destinations["billing"]
    assert billing.timeout == 0.5
    assert billing.retry is not None
    assert billing.retry.schedule == [1.0, 60.0]
    assert billing.rate is None and billing.concurrency is None
    # Rates are kept as the seconds between two sends.
    assert (rules.destinations["slow"].concurrency, rules.destinations["slow"].rate) == (2, 0.2)
    assert rules.destinations["slower"].rate == 2.0
    assert rules.routes[0].continue_ is True


# -- environment substitution ---------------------------------------------------------------


def test_env_substitution(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.yaml",
        """
        sources:
          goapi:
            provider: ${PROVIDER}
            secret: "${SECRET}"
          piapi:
            provider: piapi
            secret: ${UNSET_SECRET:-fallback}
          novita:
            provider: novita
            secret: ${EMPTY_SECRET:-used-when-empty}
            token: ${TOKEN:-ignored}
        destinations:
          billing:
            type: webhook
            url: ${URL}
            headers:
              X-Price: "$$5 ${CURRENCY}"
              X-Plain: "a $ b"
        routes:
          - match: ['model=~"kling$"', 'task_type="${TASK_TYPE}"']
            to: [billing]
        """,
    )
    env = {
        "PROVIDER": "goapi",
        # Characters that would break the YAML if substituted before parsing.
        "SECRET": 'a": b\n- [x]#${NOT_EXPANDED_AGAIN}',
        "EMPTY_SECRET": "",
        "TOKEN": "tok_1",
        "URL": "https://billing.internal/hooks",
        "CURRENCY": "USD",
        "TASK_TYPE": "img2video",
    }
    loaded = load(tmp_path, env)
    rules = loaded.rules
    secret = rules.sources["goapi"].secret
    assert secret is not None
    assert secret.get_secret_value() == env["SECRET"]
    piapi_secret = rules.sources["piapi"].secret
    novita = rules.sources["novita"]
    assert piapi_secret is not None and piapi_secret.get_secret_value() == "fallback"
    assert novita.secret is not None and novita.secret.get_secret_value() == "used-when-empty"
    assert novita.token is not None and novita.token.get_secret_value() == "tok_1"
    billing = rules.destinations["billing"]
    assert billing.url == "https://billing.internal/hooks"
    assert billing.headers == {"X-Price": "$5 USD", "X-Plain": "a $ b"}
    assert rules.routes[0].match == [
        Matcher("model", "=~", "kling$"),
        Matcher("task_type", "=", "img2video"),
    ]
    file = tmp_path / "r.yaml"
    assert loaded.defaults_used == [
        f"{file}: sources.piapi.secret uses the default of ${{UNSET_SECRET}}",
        f"{file}: sources.novita.secret uses the default of ${{EMPTY_SECRET}}",
    ]


def test_unset_and_malformed_variables(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.yaml",
        """
        sources:
          goapi: {provider: goapi, secret: "${GOAPI_SECRET}"}
        routes:
          - to: []
            match: ['model="${MODEL"', 'task_type="${1BAD}"']
        """,
    )
    file = tmp_path / "r.yaml"
    assert problems(tmp_path, {"OTHER": "x"}) == [
        f"{file}: sources.goapi.secret: environment variable GOAPI_SECRET is not set "
        "(set it, or write ${GOAPI_SECRET:-default} to give a default)",
        f"{file}: routes[0].match[0]: malformed '${{' at character 7: write ${{NAME}} or "
        "${NAME:-default}, or $$ for a literal $",
        f"{file}: routes[0].match[1]: malformed '${{' at character 11: write ${{NAME}} or "
        "${NAME:-default}, or $$ for a literal $",
    ]


# -- every problem at once ------------------------------------------------------------------


def test_every_problem_in_every_file_is_reported_at_once(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        "a.yaml",
        """
        sources:
          goapi:
            provider: goapi
            secrett: x
        destinations:
          billing:
            type: webhook
            url: https://billing.internal
            secret: not-a-whsec
        routes:
          - to: [billing]
          - to: [billing]
          - match: ['model=~"(kling"']
            to: [billing]
        surces: {}
        """,
    )
    b = write(tmp_path, "b.yaml", "sources:\n  piapi:\n    provider: piapi\n   secret: [\n")
    c = write(
        tmp_path,
        "c.yaml",
        """
        sources:
          unset: {provider: goapi, secret: "${UNSET_SECRET}"}
          novita: {provider: novitaa, token: "bad/token"}
          open: {provider: goapi}
        routes:
          - to: [oncal]
        """,
    )
    d = write(
        tmp_path,
        "sub/d.yml",
        f"""
        destinations:
          billing: {{type: webhook, url: "https://x", secret: {WHSEC}}}
          gen-alerts: {{type: webhook, url: "https://y"}}
        routes:
          - to: [billing]
            continue: maybe
        """,
    )

    found = problems(tmp_path)

    # In file order: file by file, each file's problems in the order its keys are written,
    # whichever check found them.
    assert found == [
        f"{a}: sources.goapi.secrett: unknown key",
        f"{a}: destinations.billing.secret: webhook secret must start with whsec_",
        f"{a}: routes[2].match: bad regex in 'model=~\"(kling\"': "
        "missing ), unterminated subpattern at position 0",
        f"{a}: surces: unknown key "
        "(expected sources, destinations, routes, smtp, retention, inhibit)",
        f"{b}: line 4, column 4: invalid YAML: "
        "expected <block end>, but found '<block mapping start>'",
        f"{c}: sources.unset.secret: environment variable UNSET_SECRET is not set "
        "(set it, or write ${UNSET_SECRET:-default} to give a default)",
        f"{c}: sources.novita.provider: unknown provider 'novitaa' (known: goapi, novita, piapi)",
        f"{c}: sources.novita.token: must use only letters, digits, '_', '.' and '-' "
        "(it is part of the URL path)",
        f"{c}: sources.open: needs a secret or a token: without either anyone could post events",
        f"{c}: routes[0].to: unknown destination 'oncal' (known: billing, gen-alerts)",
        f"{d}: destinations.billing: already defined in {a}",
        f"{d}: routes[0].continue: Input should be a valid boolean, unable to interpret input",
    ]
    assert str(ConfigError(found)) == "\n".join(found)


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "first.yaml", SOURCE + DESTINATION)
    second = write(tmp_path, "nested/second.yaml", SOURCE + DESTINATION)
    assert problems(tmp_path) == [
        f"{second}: sources.goapi: already defined in {first}",
        f"{second}: destinations.billing: already defined in {first}",
    ]


def test_duplicate_key_in_one_file_names_the_line(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "r.yaml",
        "sources:\n  goapi: {provider: goapi, secret: a}\n  goapi: {provider: goapi, secret: b}\n",
    )
    assert problems(tmp_path) == [f"{file}: line 3, column 3: invalid YAML: duplicate key 'goapi'"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "extra: 1\n",
            "extra: unknown key (expected sources, destinations, routes, smtp, retention, inhibit)",
        ),
        ("sources:\n  goapi: {provider: goapi, secret: s, x: 1}\n", "sources.goapi.x: unknown key"),
        (
            f"destinations:\n  d: {{type: webhook, url: 'http://x', secret: {WHSEC}, y: 1}}\n",
            "destinations.d.y: unknown key",
        ),
        (
            "destinations:\n  d: {type: webhook, url: 'http://x', retry: {schedule: [], z: 1}}\n",
            "destinations.d.retry.z: unknown key",
        ),
        ("routes:\n  - {to: [], contine: true}\n", "routes[0].contine: unknown key"),
    ],
)
def test_unknown_keys_at_each_level(tmp_path: Path, text: str, expected: str) -> None:
    file = write(tmp_path, "r.yaml", text)
    assert problems(tmp_path) == [f"{file}: {expected}"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "must be a mapping with sources, destinations and routes"),
        ("sources: [goapi]\n", "sources: must be a mapping of names to definitions"),
        ("routes: {a: 1}\n", "routes: must be a list of routes"),
        ("routes: [to-billing]\n", "routes[0]: must be a mapping of keys to values"),
        ("sources:\n  goapi:\n", "sources.goapi: must be a mapping of keys to values"),
        ("sources:\n  1: {provider: goapi, secret: s}\n", "sources.1: name must be a string"),
        ("destinations:\n  d: {type: pager}\n", "destinations.d: unknown type 'pager' (known:"),
        ("destinations:\n  d: {url: 'http://x'}\n", "destinations.d: missing required key 'type'"),
        ("destinations:\n  d: {type: webhook}\n", "destinations.d.url: missing required key"),
        (
            "destinations:\n  d: {type: webhook, url: 'ftp://x'}\n",
            "destinations.d.url: must be an http:// or https:// URL",
        ),
        (
            "destinations:\n  d: {type: webhook, url: 'http://x', timeout: soon}\n",
            "destinations.d.timeout: bad duration 'soon'",
        ),
        (
            f"destinations:\n  d: {{type: webhook, url: 'http://x', secret: '{WHSEC} whsec_!'}}\n",
            "destinations.d.secret: webhook secret is not valid base64 after whsec_ "
            "(secret 2 of 2)",
        ),
        (
            "destinations:\n  d: {type: webhook, url: 'http://x', body: original, "
            "include_raw: false}\n",
            "destinations.d: include_raw: false leaves nothing to send with body: original",
        ),
        ("routes:\n  - match: ['status=failed']\n", "routes[0].to: missing required key"),
        ("routes:\n  - {to: [], match: ['nope=x']}\n", "routes[0].match: unknown label 'nope'"),
        (
            "sources:\n  'go/api': {provider: goapi, secret: s}\n",
            "sources.go/api: name must use only letters, digits",
        ),
        (
            "sources:\n  n: {provider: novita, token: callback}\n",
            "sources.n.token: must not be 'callback'",
        ),
        ("sources:\n  g: {provider: goapi, secret: ''}\n", "sources.g.secret: is empty"),
        (
            "sources:\n  g: {provider: goapi, secret: s, allow_ips: [10.0.0.0/8, nope]}\n",
            "sources.g.allow_ips[1]: 'nope' is not an IP address or CIDR",
        ),
        ("sources: [\n", "line 2, column 1: invalid YAML:"),
        (
            "sources:\n  g: {provider: goapi, secret: s, labels: [team, status]}\n",
            "sources.g.labels: label name 'status' is a built-in label",
        ),
        (
            "sources:\n  g: {provider: goapi, secret: s, labels: [Team]}\n",
            "sources.g.labels: label name 'Team': lower-case letters",
        ),
        (
            "sources:\n  g: {provider: goapi, secret: s, labels: [token]}\n",
            "sources.g.labels: label name 'token' is a credential's key",
        ),
        (
            "sources:\n  g: {provider: goapi, secret: s, labels: {team: {pattern: '('}}}\n",
            "sources.g.labels.team.pattern: bad regex '('",
        ),
        (
            "sources:\n  g: {provider: goapi, secret: s, labels: {team: {colour: red}}}\n",
            "sources.g.labels.team.colour: unknown key",
        ),
        (
            "sources:\n  g: {provider: goapi, secret: s, labels: [team]}\n"
            "routes:\n  - {to: [], match: ['tema=media']}\n",
            "routes[0].match: unknown label 'tema' in 'tema=\"media\"' (valid: error_code, "
            "final, model, output_kind, provider, source, status, task_id, task_type, team, test)",
        ),
        (
            "sources:\n  g: {provider: goapi, secret: s, labels: [team]}\n"
            "routes:\n  - {to: [], mention: ['label:user']}\n",
            "routes[0].mention: label:user: no source declares the label 'user' (declared: team)",
        ),
        (
            "routes:\n  - {to: [], mention: ['@here']}\n",
            "routes[0].mention.who: bad mention '@here': write <@U012AB3CD>",
        ),
        (
            "destinations:\n  d: {type: webhook, url: 'http://x', rate: fast}\n",
            "destinations.d.rate: bad rate 'fast': use sends per unit of time, e.g. '10/s'",
        ),
        (
            "destinations:\n  d: {type: webhook, url: 'http://x', rate: 0/s}\n",
            "destinations.d.rate: bad rate '0/s': must be more than 0 sends",
        ),
        (
            "destinations:\n  d: {type: webhook, url: 'http://x', concurrency: 0}\n",
            "destinations.d.concurrency: Input should be greater than or equal to 1",
        ),
        (
            "routes:\n  - {to: [], group: {by: [batch]}}\n",
            "routes[0].group.by: unknown label 'batch' (valid: error_code",
        ),
        (
            "routes:\n  - {to: [], group: {by: [model], close_after: 0}}\n",
            "routes[0].group.close_after: Input should be greater than or equal to 1",
        ),
        (
            "routes:\n  - {to: [], group: {by: [model], interval: 0s}}\n",
            "routes[0].group: interval must be more than 0s",
        ),
        (
            "routes:\n  - {to: [], mute_times: [{weekdays: [caturday]}]}\n",
            "routes[0].mute_times[0].weekdays: bad weekday 'caturday'",
        ),
        (
            "routes:\n  - {to: [], mute_times: {hours: ['22-07']}}\n",
            "routes[0].mute_times[0].hours: bad hours '22-07': write a range like '22:00-07:00'",
        ),
        (
            "routes:\n  - {to: [], mute_times: [{time_zone: Mars/Olympus}]}\n",
            "routes[0].mute_times[0].time_zone: unknown time zone 'Mars/Olympus'",
        ),
        (
            "inhibit:\n  - {when: ['provider=\"goapi-account\"'], mute: ['team=x'], for: 1h}\n",
            "inhibit[0].mute: unknown label 'team' in 'team=\"x\"'",
        ),
        (
            "inhibit:\n  - {when: ['provider=\"goapi-account\"'], mute: ['status=failed']}\n",
            "inhibit[0].for: missing required key",
        ),
        ("inhibit: {when: x}\n", "inhibit: must be a list of inhibit rules"),
    ],
)
def test_single_problems(tmp_path: Path, text: str, expected: str) -> None:
    file = write(tmp_path, "r.yaml", text)
    [problem] = problems(tmp_path)
    assert problem.startswith(f"{file}: {expected}")


def test_route_index_counts_within_its_own_file(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", DESTINATION + "routes:\n  - to: [billing]\n  - to: [billing]\n")
    b = write(tmp_path, "b.yaml", "routes:\n  - to: [billing]\n  - to: [gone]\n")
    assert problems(tmp_path) == [f"{b}: routes[1].to: unknown destination 'gone' (known: billing)"]


def test_unknown_destination_when_none_exist(tmp_path: Path) -> None:
    file = write(tmp_path, "r.yaml", "routes:\n  - to: oncall\n")
    assert problems(tmp_path) == [
        f"{file}: routes[0].to: unknown destination 'oncall' (known: none defined)"
    ]


@pytest.mark.parametrize("to", ["[billing, nowhere]", "nowhere"])
def test_a_bad_key_in_a_route_hides_none_of_its_other_problems(tmp_path: Path, to: str) -> None:
    file = write(
        tmp_path,
        "r.yaml",
        DESTINATION
        + f"routes:\n  - match: ['status=\"failed\"']\n    to: {to}\n    contnue: true\n",
    )
    assert problems(tmp_path) == [
        f"{file}: routes[0].to: unknown destination 'nowhere' (known: billing)",
        f"{file}: routes[0].contnue: unknown key",
    ]


def test_an_smtp_block_with_unset_variables_is_reported_there_only(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "r.yaml",
        """
        smtp:
          host: ${SMTP_HOST}
          from: ${SMTP_FROM}
        destinations:
          oncall: {type: email, to: [oncall@example.com]}
          pager: {type: email, to: [pager@example.com], host: mail.example.com}
        """,
    )
    unset = "is not set (set it, or write ${{{0}:-default}} to give a default)"
    # The destinations' host and from are set, in the smtp: block: not "missing" as well.
    assert problems(tmp_path) == [
        f"{file}: smtp.host: environment variable SMTP_HOST " + unset.format("SMTP_HOST"),
        f"{file}: smtp.from: environment variable SMTP_FROM " + unset.format("SMTP_FROM"),
    ]


def test_an_invalid_smtp_block_is_reported_there_only(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "r.yaml",
        "smtp: {host: mail.example.com, from: ops@example.com, port: 0}\n"
        "destinations:\n  oncall: {type: email, to: [oncall@example.com]}\n",
    )
    assert problems(tmp_path) == [
        f"{file}: smtp.port: Input should be greater than or equal to 1",
    ]


def test_problems_come_in_file_order_whichever_check_found_them(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "r.yaml",
        """
        routes:
          - to: [gone]
        destinations:
          m: {type: email, to: [a@example.com]}
          w: {type: webhook, url: ftp://x}
        sources:
          s: {provider: nope, secret: x}
        """,
    )
    assert problems(tmp_path) == [
        f"{file}: routes[0].to: unknown destination 'gone' (known: m, w)",
        f"{file}: destinations.m.host: missing (set it here or in the shared smtp: block)",
        f"{file}: destinations.m.from: missing (set it here or in the shared smtp: block)",
        f"{file}: destinations.w.url: must be an http:// or https:// URL",
        f"{file}: sources.s.provider: unknown provider 'nope' (known: goapi, novita, piapi)",
    ]


def test_invalid_destination_is_not_also_reported_as_unknown(tmp_path: Path) -> None:
    file = write(tmp_path, "r.yaml", "destinations:\n  d: {type: webhook}\nroutes:\n  - to: [d]\n")
    assert problems(tmp_path) == [f"{file}: destinations.d.url: missing required key"]


# -- secrets --------------------------------------------------------------------------------


def test_secret_values_never_appear_in_messages(tmp_path: Path) -> None:
    leak = "Sup3r-Secr3t-Value"
    write(
        tmp_path,
        "a.yaml",
        """
        sources:
          goapi: {provider: goapi, secret: "${LEAK}", bogus: "${LEAK}", allow_ips: "${LEAK}"}
          novita: {provider: novita, token: "${LEAK_PATH}"}
          piapi: {provider: piapi, secret: {value: "${LEAK}"}}
        destinations:
          d:
            type: webhook
            url: "${LEAK}"
            secret: "${LEAK}"
            body: "${LEAK}"
            headers: {Authorization: ["${LEAK}"]}
            retry: {schedule: [], jitter: "${LEAK}"}
        routes:
          - to: []
            continue: "${LEAK}"
        """,
    )
    # A syntax error on a line that holds a secret must not quote the line.
    write(tmp_path, "b.yaml", f"sources:\n  x: {{secret: {leak}: oops}}\n")
    env = {"LEAK": leak, "LEAK_PATH": f"{leak}/x"}
    found = problems(tmp_path, env)
    assert len(found) == 11, found
    for problem in found:
        assert leak not in problem, problem


# -- the folder itself ----------------------------------------------------------------------


def test_missing_directory(tmp_path: Path) -> None:
    assert problems(tmp_path / "nope") == [f"{tmp_path / 'nope'}: no such directory"]


def test_file_instead_of_directory(tmp_path: Path) -> None:
    file = write(tmp_path, "rules.yaml", SOURCE)
    assert problems(file) == [f"{file}: not a directory"]


def test_directory_without_rules_files(tmp_path: Path) -> None:
    write(tmp_path, "README.md", "# rules")
    assert problems(tmp_path) == [f"{tmp_path}: no *.yaml or *.yml rules file"]


def test_only_empty_files_give_empty_rules(tmp_path: Path) -> None:
    write(tmp_path, "empty.yaml", "# nothing yet\n")
    write(tmp_path, "sections.yaml", "sources:\ndestinations:\nroutes:\n")
    rules = load(tmp_path).rules
    assert (rules.sources, rules.destinations, rules.routes) == ({}, {}, [])


def test_a_providers_own_source_checks_name_file_and_key(tmp_path: Path) -> None:
    from relay.routing.model import SourceConfig

    def novita_needs_a_token(cfg: SourceConfig) -> list[tuple[str | None, str]]:
        if cfg.token is None:
            return [("token", "is required: novita signs nothing")]
        return []

    write(
        tmp_path,
        "a.yaml",
        """
        sources:
          nov:
            provider: novita
            secret: not-used
          ok:
            provider: novita
            token: t0ken
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_rules(tmp_path, {}, PROVIDERS, {"novita": novita_needs_a_token})
    assert caught.value.problems == [
        f"{tmp_path / 'a.yaml'}: sources.nov.token: is required: novita signs nothing"
    ]


# -- slack and email destinations --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "destinations:\n  s: {type: slack, channel: '#x'}\n",
            "destinations.s: needs token and channel (the Web API), or webhook_url",
        ),
        (
            "destinations:\n  s: {type: slack, token: t, channel: '#x', webhook_url: 'https://h'}\n",
            "destinations.s: give either webhook_url, or token and channel, not both",
        ),
        (
            "destinations:\n  s: {type: slack, webhook_url: 'https://h', thread_replies: true}\n",
            "destinations.s: thread_replies needs token and channel",
        ),
        (
            "destinations:\n  s: {type: slack, token: t, channel: c, api_url: 'slack.com'}\n",
            "destinations.s.api_url: must be an http:// or https:// URL",
        ),
        (
            "destinations:\n  m: {type: email, to: [], host: h, from: r@x.io}\n",
            "destinations.m.to: List should have at least 1 item",
        ),
        (
            "destinations:\n  m: {type: email, to: ['a@x.io\\r\\nBcc: b@y.io'], host: h,"
            " from: r@x.io}\n",
            "destinations.m.to: must be one plain address",
        ),
        (
            "destinations:\n  m: {type: email, to: ['a@x.io, b@y.io'], host: h, from: r@x.io}\n",
            "destinations.m.to: must be one plain address",
        ),
        (
            "destinations:\n  m: {type: email, to: [a@x.io], from: r@x.io}\n",
            "destinations.m.host: missing (set it here or in the shared smtp: block)",
        ),
        (
            "destinations:\n  m: {type: email, to: [a@x.io], host: h}\n",
            "destinations.m.from: missing (set it here or in the shared smtp: block)",
        ),
        (
            "destinations:\n  m: {type: email, to: [a@x.io], host: h, from: r@x.io, tls: true,"
            " starttls: true}\n",
            "destinations.m.tls: give tls (implicit TLS) or starttls, not both",
        ),
        (
            "destinations:\n  m: {type: email, to: [a@x.io], host: h, from: r@x.io,"
            " ca_file: /nonexistent/ca.pem}\n",
            "destinations.m.ca_file: no such file: /nonexistent/ca.pem",
        ),
        ("smtp: {port: 0}\n", "smtp.port: Input should be greater than or equal to 1"),
        ("smtp: {hots: x}\n", "smtp.hots: unknown key"),
    ],
)
def test_slack_and_email_problems(tmp_path: Path, text: str, expected: str) -> None:
    file = write(tmp_path, "r.yaml", text)
    [problem] = problems(tmp_path)
    assert problem.startswith(f"{file}: {expected}"), problem


def test_email_destinations_inherit_the_shared_smtp_block(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        """
        smtp:
          host: smtp.example.com
          port: 2525
          username: relay
          password: ${SMTP_PASSWORD}
          from: relay@example.com
        """,
    )
    write(
        tmp_path,
        "b.yaml",
        """
        destinations:
          oncall:
            type: email
            to: oncall@example.com
          archive:
            type: email
            to: [archive@example.com]
            host: mail.internal
            starttls: false
        """,
    )
    rules = load(tmp_path, {"SMTP_PASSWORD": "pw"}).rules
    oncall, archive = rules.destinations["oncall"], rules.destinations["archive"]
    assert oncall.type == "email" and archive.type == "email"
    assert (oncall.host, oncall.effective_port, oncall.security) == (
        "smtp.example.com",
        2525,
        "starttls",
    )
    assert oncall.to == ["oncall@example.com"]
    assert oncall.password is not None and oncall.password.get_secret_value() == "pw"
    assert (archive.host, archive.effective_port, archive.security) == (
        "mail.internal",
        2525,
        "none",
    )
    assert archive.from_ == "relay@example.com"


def test_the_smtp_block_is_defined_once(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "smtp: {host: a}\n")
    b = write(tmp_path, "b.yaml", "smtp: {host: b}\n")
    assert problems(tmp_path) == [f"{b}: smtp: already defined in {a}"]


def test_email_ports_follow_the_security(tmp_path: Path) -> None:
    write(
        tmp_path,
        "r.yaml",
        """
        smtp: {host: h, from: r@x.io}
        destinations:
          a: {type: email, to: [a@x.io]}
          b: {type: email, to: [a@x.io], tls: true}
          c: {type: email, to: [a@x.io], starttls: false}
        """,
    )
    d = load(tmp_path).rules.destinations
    assert [(d[n].security, d[n].effective_port) for n in "abc"] == [  # type: ignore[union-attr]
        ("starttls", 587),
        ("tls", 465),
        ("none", 25),
    ]
