"""A recording reverse proxy in front of one vLLM server: every chat request body goes to a JSON-lines file.

python3 record_proxy.py LISTEN_PORT UPSTREAM_URL OUT.jsonl
The launcher runs against the proxy (--skip-server-start with an endpoint file naming it) so that replay_load.py
can send the evaluation's own calls again: their prompts, tools, prefix reuse and sampling arguments."""
import json
import sys

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

PORT, UPSTREAM, OUT = int(sys.argv[1]), sys.argv[2].rstrip("/"), sys.argv[3]


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    if request.method == "POST" and request.path.endswith("/chat/completions"):
        with open(OUT, "a") as f:
            f.write(json.dumps(json.loads(body)) + "\n")
    headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "authorization")}
    session: ClientSession = request.app["session"]
    async with session.request(request.method, UPSTREAM + request.path_qs, data=body, headers=headers) as r:
        return web.Response(status=r.status, body=await r.read(), content_type=r.content_type)


async def start(app: web.Application) -> None:
    app["session"] = ClientSession(timeout=ClientTimeout(total=600), connector=TCPConnector(limit=0))


async def stop(app: web.Application) -> None:
    await app["session"].close()


app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_route("*", "/{tail:.*}", forward)
app.on_startup.append(start)
app.on_cleanup.append(stop)
web.run_app(app, host="127.0.0.1", port=PORT, print=None)
