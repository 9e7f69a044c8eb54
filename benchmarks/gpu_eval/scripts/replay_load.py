"""The saturating load of the evaluation's own shape: the chat requests record_proxy.py recorded, sent again
with no conversation waiting on another, at each concurrency level.

python3 replay_load.py URL REQUESTS.jsonl LEVEL [LEVEL ...]   prints JSON: per level, requests, prompt and
output tokens (from each reply's usage), wall s, and the rates. The highest level's token rates are the
saturated rate: the evaluation's total tokens over it is the lower bound that issue 17 compares a run with."""
import asyncio
import json
import sys
import time
from pathlib import Path

from aiohttp import ClientSession, ClientTimeout, TCPConnector


async def level(session: ClientSession, url: str, bodies: list[dict], concurrency: int) -> dict:
    sem = asyncio.Semaphore(concurrency)

    async def go(body: dict) -> tuple[int, int, float]:
        async with sem:
            t0 = time.monotonic()
            async with session.post(url + "/v1/chat/completions", json=body) as r:
                usage = (await r.json()).get("usage") or {}
            return usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), time.monotonic() - t0

    t0 = time.monotonic()
    done = await asyncio.gather(*(go(b) for b in bodies))
    wall = time.monotonic() - t0
    prompt, output = sum(d[0] for d in done), sum(d[1] for d in done)
    return {"concurrency": concurrency, "requests": len(done), "prompt_tokens": prompt, "output_tokens": output,
            "wall_s": round(wall, 2), "requests_per_s": round(len(done) / wall, 1),
            "prompt_tok_s": round(prompt / wall), "output_tok_s": round(output / wall),
            "latency_mean_s": round(sum(d[2] for d in done) / len(done), 3)}


async def main(url: str, path: str, levels: list[int]) -> None:
    bodies = [json.loads(line) for line in Path(path).read_text().splitlines()]
    async with ClientSession(timeout=ClientTimeout(total=900), connector=TCPConnector(limit=0)) as session:
        print(json.dumps({"recorded": path, "levels": [await level(session, url, bodies, c) for c in levels]},
                         indent=1))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1].rstrip("/"), sys.argv[2], [int(x) for x in sys.argv[3:]]))
