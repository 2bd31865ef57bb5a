"""`relay check` beyond validity: a route shadowed by an earlier one is warned about (the
rules still load: exit 0), and `--fixtures` shows which sample callbacks each route catches."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.cli import base_env, relay, write
from tests.fixtures_util import FIXTURES

RULES = """
sources:
  goapi: {provider: goapi, secret: s3cr3t}
destinations:
  oncall: {type: webhook, url: "http://127.0.0.1:9/oncall"}
  renders: {type: webhook, url: "http://127.0.0.1:9/renders"}
routes:
  - match: ['status="failed"']
    to: [oncall]
  - match: ['status="failed"', 'model=~"midjourney.*"']
    to: [renders]
  - match: ['final="true"']
    to: [renders]
"""


def test_a_shadowed_route_is_warned_about_and_fixtures_are_counted(tmp_path: Path) -> None:
    write(tmp_path / "rules", {"main.yaml": RULES})
    r = relay(tmp_path, "check", "--rules", "rules", env=base_env())
    assert r.code == 0, r.text
    assert (
        "warning: rules/main.yaml: routes[1] never matches: rules/main.yaml: routes[0] comes "
        "first, catches every event it would and does not continue"
    ) in r.out
    assert r.out.count("warning:") == 1

    r = relay(tmp_path, "check", "--rules", "rules", "--fixtures", str(FIXTURES), env=base_env())
    assert r.code == 0, r.text
    # "  rules/main.yaml: routes[0]: 1 (goapi/failed_midjourney.json)"
    counts = {}
    for line in r.out.splitlines():
        if line.strip().startswith("rules/main.yaml: routes["):
            where, _, rest = line.strip().rpartition(": ")
            counts[where] = int(rest.split(" ")[0])
    # The failed GoAPI sample reaches the first route; none can reach the second; the final
    # successes (a dozen and more GoAPI samples) the third.
    assert counts["rules/main.yaml: routes[0]"] >= 1
    assert counts["rules/main.yaml: routes[1]"] == 0
    assert counts["rules/main.yaml: routes[2]"] >= 10
    assert "goapi/failed_midjourney.json" in r.out


def test_fixtures_from_a_folder_without_samples(tmp_path: Path) -> None:
    write(tmp_path / "rules", {"main.yaml": RULES})
    (tmp_path / "empty").mkdir()
    r = relay(tmp_path, "check", "--rules", "rules", "--fixtures", "empty", env=base_env())
    assert r.code == 2
    assert "no *.json samples under empty" in r.err
