"""Prometheus Alertmanager as the end-to-end benchmark's peer (benchmarks/e2e.py): the Debian
package's binary, its configuration, and the alert that stands for one provider callback."""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BINARY = "/usr/bin/prometheus-alertmanager"
PACKAGE = "prometheus-alertmanager"

# One route to one webhook receiver; one aggregation group per task (group_by: [task_id]),
# flushed as soon as its first alert arrives (group_wait: 0s); group_interval and
# repeat_interval far beyond any run, so each alert is notified exactly once, and no
# "resolved" notification either.
CONFIG = """\
route:
  receiver: bench
  group_by: [task_id]
  group_wait: 0s
  group_interval: 24h
  repeat_interval: 168h
receivers:
  - name: bench
    webhook_configs:
      - url: {url}
        send_resolved: false
"""


def ensure_installed(binary: str = BINARY) -> str:
    """The binary's path, installing the Debian package first when it is missing."""
    if Path(binary).exists():
        return binary
    if binary != BINARY:
        raise SystemExit(f"{binary} does not exist")
    apt = shutil.which("apt-get")
    if apt is None:
        raise SystemExit(f"{binary} is missing and there is no apt-get to install {PACKAGE}")
    print(f"installing {PACKAGE} (apt-get install -y {PACKAGE})", flush=True)
    done = subprocess.run([apt, "install", "-y", PACKAGE], check=False, timeout=600)
    if done.returncode != 0:
        # A fresh container has no package lists yet.
        subprocess.run([apt, "update"], check=False, timeout=600)
        subprocess.run([apt, "install", "-y", PACKAGE], check=True, timeout=600)
    if not Path(binary).exists():
        raise SystemExit(f"{PACKAGE} is installed but {binary} is still missing")
    return binary


def version(binary: str) -> str:
    done = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def command(binary: str, port: int, home: Path, receiver_url: str) -> list[str]:
    """Loopback only, clustering off, its own storage and configuration under ``home``."""
    config = home / "alertmanager.yml"
    config.write_text(CONFIG.format(url=receiver_url))
    storage = home / "data"
    storage.mkdir(exist_ok=True)
    return [
        binary,
        f"--config.file={config}",
        f"--storage.path={storage}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]


def alert(callback: dict[str, Any], task_id: str) -> list[dict[str, Any]]:
    """What ``POST /api/v2/alerts`` takes for one callback: a list of one alert whose labels
    identify the task (``task_id`` unique per event, the grouping key) and whose annotations
    carry the rest of the callback (less its webhook config, secret included), so that it is
    about as many bytes as the callback."""
    data = callback["data"]
    return [
        {
            "labels": {
                "alertname": "TaskFinished",
                "provider": "goapi",
                "task_id": task_id,
                "status": data["status"],
                "model": data["model"],
                "task_type": data["task_type"],
            },
            "annotations": {
                "prompt": data["input"]["prompt"],
                "image_url": data["output"]["image_url"],
                "input": json.dumps(data["input"]),
                "meta": json.dumps(data["meta"]),
                "error": json.dumps(data["error"]),
            },
            "startsAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "generatorURL": f"https://api.goapi.ai/api/v1/task/{task_id}",
        }
    ]
