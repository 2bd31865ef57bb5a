"""Templates through `relay serve` (a real process) to the Slack stand-in, a real SMTP server and
a webhook receiver: every template kind renders (Slack header, text and sections, a route's
text in place of the destination's, mail subject and paragraph, a webhook body of another
shape, and the destination itself: Slack channel, mail address, webhook URL path); payload
text stays escaped whatever a template does with it; a template that fails for one event
makes that delivery dead with the reason (admin API and `relay deliveries`); a broken template
is a `relay check` error naming file and key, and `relay serve` refuses to start with it;
`relay test` shows the templated requests."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.downstream import Downstream
from tests.e2e.cli import GOAPI_SECRET, Serve, arelay, base_env, free_port, relay, write
from tests.e2e.test_slack_and_email import until
from tests.fixtures_util import FIXTURES, load
from tests.slack_standin import SlackStandIn
from tests.smtp_fixtures import SmtpServerFactory

TOKEN = "templates-admin-token-0123456789"
# Everything a payload could try: a mention, a broadcast, markup, an entity.
PROMPT = "<!channel> <script>alert(1)</script> & <@U0BOSS>"

RULES = """
smtp:
  host: 127.0.0.1
  port: ${SMTP_PORT}
  starttls: false
  from: relay@example.com
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
    labels: [team, batch, user]
destinations:
  renders:
    type: slack
    token: xoxb-test
    channel: '#{{ labels.team }}-renders'
    api_url: ${SLACK_API}
    pace: 0s
    template:
      header: '{{ provider_name }} for {{ labels.team }}: {{ title }}'
      text: '*{{ labels.team }}* asked for: {{ event.prompt }}'
      sections:
        - >-
          Batch `{{ labels.batch }}`{% if event.outputs %} ·
          {{ link(event.outputs[0].url, "open the image") }}{% endif %}
  team-mail:
    type: email
    to: ['{{ labels.team }}@example.com', lead@example.com]
    template:
      subject: '{{ labels.team }}: {{ title }} ({{ event.prompt }})'
      paragraph: 'Hello {{ labels.team }}, your prompt was: {{ event.prompt }}'
  team-hook:
    type: webhook
    url: '${DOWN}/teams/{{ labels.team }}'
    template:
      paths: [/teams/media, /teams/sound]
      body:
        task: '{{ task_id }}'
        ok: '{{ status == "succeeded" }}'
        images: '{{ event.outputs | map(attribute="url") | list }}'
        text: 'Done: {{ event.prompt }}'
        team: {name: '{{ labels.team }}', batch: '{{ labels.batch | default(none) }}'}
routes:
  - match: ['team=~"media|ops"']
    to: [renders, team-mail, team-hook]
  - match: ['team="sound"']
    to: [renders]
    mention: {who: ['<!subteam^S0SOUND>'], when: [succeeded]}
    template:
      text: 'Sound team: {{ title }} <@U0LEAD>'
"""


def env(slack: SlackStandIn, smtp_port: int, down: Downstream, home: Path) -> dict[str, str]:
    return base_env(
        GOAPI_SECRET=GOAPI_SECRET,
        SMTP_PORT=str(smtp_port),
        SLACK_API=slack.api_url,
        DOWN=f"http://127.0.0.1:{down.port}",
        RELAY_DB=f"sqlite:///{home}/relay.db",
        RELAY_ADMIN_TOKEN=TOKEN,
    )


def fixture(name: str, task_id: str, prompt: str | None = None) -> dict[str, Any]:
    body, _ = load(name)
    body = json.loads(json.dumps(body))
    body["data"]["task_id"] = task_id
    if prompt is not None:
        body["data"]["input"]["prompt"] = prompt
    return body


async def post(client: httpx.AsyncClient, query: str, body: dict[str, Any]) -> str:
    answer = await client.post(
        f"/hooks/goapi?{query}",
        content=json.dumps(body),
        headers={"x-webhook-secret": GOAPI_SECRET, "content-type": "application/json"},
    )
    assert answer.status_code == 200, answer.text
    event_id: str = answer.json()["event_id"]
    return event_id


async def deliveries(client: httpx.AsyncClient, event_id: str) -> dict[str, dict[str, Any]]:
    detail = await client.get(f"/admin/events/{event_id}")
    assert detail.status_code == 200, detail.text
    return {d["destination"]: d for d in detail.json()["deliveries"]}


def mrkdwn_texts(node: Any) -> list[str]:
    """Every mrkdwn text in Slack blocks (what Slack parses for mentions and links)."""
    if isinstance(node, list):
        return [t for item in node for t in mrkdwn_texts(item)]
    if not isinstance(node, dict):
        return []
    found = [node["text"]] if node.get("type") == "mrkdwn" else []
    return found + [t for value in node.values() for t in mrkdwn_texts(value)]


async def test_every_template_kind_renders_and_a_failing_one_is_dead_with_its_reason(
    tmp_path: Path, slack: SlackStandIn, smtp_server: SmtpServerFactory, downstream: Downstream
) -> None:
    slack.add_channel("C0MEDIA0001", "media-renders")
    slack.add_channel("C0SOUND0001", "sound-renders")
    smtp = await smtp_server()
    write(tmp_path / "rules", {"rules.yaml": RULES})
    server = await Serve(tmp_path, env(slack, smtp.port, downstream, tmp_path), "serve").start()
    media = fixture("goapi/image_success_flux.json", "task-media", PROMPT)
    progress = fixture("goapi/midjourney_processing_progress.json", "task-sound")
    final = json.loads(json.dumps(progress))
    final["data"]["status"] = "completed"
    final["data"]["output"]["progress"] = 100
    ops = fixture("goapi/image_success_flux.json", "task-ops")
    admin = {"authorization": f"Bearer {TOKEN}"}
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=admin) as client:
            media_id = await post(client, "team=media&batch=b42&user=U0ANA", media)
            await post(client, "team=sound&batch=b7", progress)
            await until(lambda: len(slack.messages("C0SOUND0001")) == 1)
            await post(client, "team=sound&batch=b7", final)
            ops_id = await post(client, "team=ops", ops)
            await smtp.wait_for_messages(2)
            await downstream.wait_for(1)
            await until(lambda: len(slack.calls_to("chat.update")) == 1)

            async def settled(event_id: str) -> dict[str, dict[str, Any]]:
                """Each delivery of the event once delivered or dead (bounded)."""
                async with asyncio.timeout(10):
                    while True:
                        found = await deliveries(client, event_id)
                        if all(d["state"] in ("delivered", "dead") for d in found.values()):
                            return found
                        await asyncio.sleep(0.05)

            ops_deliveries = await settled(ops_id)
            media_deliveries = await settled(media_id)
    finally:
        code = await server.stop()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status shows it.
    assert code in (0, -signal.SIGTERM), server.output()
    log = server.output()
    assert "Traceback" not in log, log

    # Slack: the channel comes from the label; header, text and sections from the templates.
    [message] = slack.messages("C0MEDIA0001")
    assert message.blocks is not None and message.text is not None
    header = message.blocks[0]["text"]["text"]
    assert header.startswith("GoAPI for media: ") and "image" in header
    escaped = "&lt;!channel&gt; &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;@U0BOSS&gt;"
    assert message.blocks[1]["text"]["text"] == f"*media* asked for: {escaped}"
    assert message.text == f"*media* asked for: {escaped}"
    [section] = [b for b in message.blocks if "Batch" in json.dumps(b) and b["type"] == "section"]
    image = media["data"]["output"]["image_url"]
    assert section["text"]["text"] == f"Batch `b42` · <{image}|open the image>"
    # (An image's alt_text is plain text, which Slack never parses: only mrkdwn can mention.)
    shown = json.dumps([message.text, *mrkdwn_texts(message.blocks)])
    # Payload text never mentions anyone or becomes markup, whatever the template does with it.
    for forged in ("<!channel>", "<@U0BOSS>", "<script>"):
        assert forged not in shown
    # One message per task in its channel, edited in place; the route's text and mention.
    [sound] = slack.messages("C0SOUND0001")
    assert len([c for c in slack.calls_to("chat.postMessage")]) == 2
    assert sound.text is not None and sound.blocks is not None
    assert sound.text.startswith("<!subteam^S0SOUND> Sound team: ")
    assert sound.text.endswith(" <@U0LEAD>")
    assert sound.blocks[0]["text"]["text"].startswith("GoAPI for sound: ")
    assert "Batch `b7`" in json.dumps(sound.blocks)

    # Mail: the address from the label beside the static one; subject and paragraph.
    mails = {m.message["To"]: m for m in smtp.messages}
    assert set(mails) == {
        "media@example.com, lead@example.com",
        "ops@example.com, lead@example.com",
    }
    mail = mails["media@example.com, lead@example.com"]
    assert mail.rcpt_tos == ("media@example.com", "lead@example.com")
    # (Folded as sent: the parsed value keeps the fold's leading space.)
    subject = str(mail.message["Subject"]).strip()
    assert subject.startswith("media: ") and subject.endswith(f"({PROMPT})")
    html = mail.message.get_body(("html",))
    text = mail.message.get_body(("plain",))
    assert html is not None and text is not None
    assert (
        "Hello media, your prompt was: &lt;!channel&gt; &lt;script&gt;alert(1)&lt;/script&gt; "
        "&amp; &lt;@U0BOSS&gt;" in html.get_content()
    )
    assert "<script>" not in html.get_content()
    assert f"Hello media, your prompt was: {PROMPT}" in text.get_content()

    # Webhook: the path from the label, a body of the receiver's own shape, JSON values kept.
    [request] = downstream.received
    assert request.path == "/teams/media"
    assert json.loads(request.body) == {
        "task": "task-media",
        "ok": True,
        "images": [image],
        "text": f"Done: {PROMPT}",
        "team": {"name": "media", "batch": "b42"},
    }
    assert {d: r["state"] for d, r in media_deliveries.items()} == dict.fromkeys(
        ("renders", "team-mail", "team-hook"), "delivered"
    )

    # The ops event: its Slack template reads a label it lacks, its webhook path is not
    # allowed; each delivery is dead with the reason, the mail went out.
    assert ops_deliveries["team-mail"]["state"] == "delivered"
    assert ops_deliveries["renders"]["state"] == "dead"
    assert ops_deliveries["renders"]["last_error"] == (
        "template of destination 'renders' sections[0] failed: "
        "'dict object' has no attribute 'batch' (permanent)"
    )
    assert ops_deliveries["team-hook"]["state"] == "dead"
    assert ops_deliveries["team-hook"]["last_error"] == (
        "template of destination 'team-hook' url rendered '/teams/ops', which is not in its "
        "template.paths (permanent)"
    )
    listed = await arelay(
        tmp_path,
        "deliveries",
        "--state",
        "dead",
        "--json",
        "--db",
        f"sqlite:///{tmp_path}/relay.db",
    )
    assert listed.code == 0, listed.text
    reasons = {d["destination"]: d["last_error"] for d in json.loads(listed.out)}
    assert reasons == {
        "renders": ops_deliveries["renders"]["last_error"],
        "team-hook": ops_deliveries["team-hook"]["last_error"],
    }


BROKEN = """
sources:
  goapi:
    provider: goapi
    secret: ${GOAPI_SECRET}
    labels: [team]
destinations:
  renders:
    type: slack
    token: xoxb-test
    channel: '#{{ labels.crew }}-renders'
    template:
      text: '{{ title }'
      sections: ['{{ event.promt }}', '{{ teams }}']
  hook:
    type: webhook
    url: 'https://{{ labels.team }}.example.com/x'
routes:
  - to: [renders, hook]
    template:
      subject: '{{ title|nosuchfilter }}'
"""


def test_a_broken_template_is_a_check_error_naming_file_and_key_and_serve_refuses_it(
    tmp_path: Path,
) -> None:
    write(tmp_path / "rules", {"rules.yaml": BROKEN})
    file = "rules/rules.yaml"
    run_env = base_env(GOAPI_SECRET=GOAPI_SECRET, RELAY_DB=f"sqlite:///{tmp_path}/relay.db")
    checked = relay(tmp_path, "check", "--rules", "rules", env=run_env)
    assert checked.code == 1, checked.text
    expected = [
        f"{file}: destinations.renders.channel: labels.crew: no source declares the label "
        "'crew' (declared: team)",
        f"{file}: destinations.renders.template.text: template syntax error on line 1: "
        "unexpected '}'",
        f"{file}: destinations.renders.template.sections[0]: event.promt: events have no "
        "field 'promt'",
        f"{file}: destinations.renders.template.sections[1]: unknown name 'teams' in template",
        f"{file}: destinations.hook.url: only the path of a URL may be templated, not its host",
        f"{file}: destinations.hook.template.paths: a templated url needs the list of paths it "
        "may render to",
        f"{file}: routes[0].template.subject: template syntax error on line 1: "
        "No filter named 'nosuchfilter'.",
    ]
    for line in expected:
        assert line in checked.err or line in checked.out, f"{line}\n---\n{checked.text}"
    # A route template key that none of its destinations uses is an error too.
    assert f"{file}: routes[0].template.subject: applies to email destinations" in checked.text

    port = free_port()
    served = relay(tmp_path, "serve", "--rules", "rules", "--port", str(port), env=run_env)
    assert served.code == 2, served.text
    assert expected[1] in served.text
    assert "Traceback" not in served.text


@pytest.mark.parametrize(
    ("labels", "shown"),
    [
        (
            "team=media,batch=b1",
            [
                '"channel": "#media-renders"',
                '"text": "*media* asked for: change the word Piapi to Pineapple"',
                "To: media@example.com, lead@example.com",
                "Subject: media: ",
                "POST http://127.0.0.1:9/teams/media",
                '"text": "Done: change the word Piapi to Pineapple"',
            ],
        ),
        (
            "team=ops",
            [
                "NOT renderable, would be dead (permanent): template of destination 'renders' "
                "sections[0] failed: 'dict object' has no attribute 'batch'",
                "To: ops@example.com, lead@example.com",
                "NOT renderable, would be dead (permanent): template of destination "
                "'team-hook' url rendered '/teams/ops'",
            ],
        ),
    ],
)
def test_relay_test_shows_the_templated_requests(
    tmp_path: Path, labels: str, shown: list[str]
) -> None:
    write(tmp_path / "rules", {"rules.yaml": RULES})
    run_env = base_env(
        GOAPI_SECRET=GOAPI_SECRET,
        SMTP_PORT="2525",
        SLACK_API="http://127.0.0.1:9/api/",
        DOWN="http://127.0.0.1:9",
    )
    flux = str(FIXTURES / "goapi" / "image_success_flux.json")
    r = relay(
        tmp_path,
        "test",
        "--rules",
        "rules",
        "--source",
        "goapi",
        flux,
        "--labels",
        labels,
        env=run_env,
    )
    for line in shown:
        assert line in r.out, f"{line}\n---\n{r.text}"
    assert r.code == (0 if labels.startswith("team=media") else 3), r.text
