"""The baseline: a bare Starlette endpoint that reads and parses the body and answers 200.

Run as `python benchmarks/bare_app.py PORT`; served exactly as `relay serve` serves (uvicorn,
one process, no access log), so the ratio isolates what relay adds.
"""

from __future__ import annotations

import json
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hook(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    return JSONResponse({"ok": True, "task_id": body["data"]["task_id"]})


app = Starlette(routes=[Route("/hooks/{source}", hook, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
