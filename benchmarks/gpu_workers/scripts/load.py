"""Saturating load and single-stream speed against one vLLM server (OpenAI chat API).

python3 load.py URL MODEL   prints JSON: for each concurrency, requests, output tokens, wall s, output tok/s;
and one request alone: time to first token for a ~4k-token prompt, decode tok/s."""
import asyncio
import json
import os
import sys
import time

import aiohttp

URL, MODEL = sys.argv[1].rstrip("/"), sys.argv[2]
LEVELS = [tuple(map(int, x.split("x"))) for x in os.environ.get("LOAD_LEVELS", "164x656,512x2048,1024x4096").split(",")]
STORY = "Write a long, detailed story about a ship's cat who sails around the world. "


async def one(session, prompt: str, max_tokens: int, stream: bool = False) -> tuple[int, float, float]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, "ignore_eos": True, "stream": stream}
    t0 = time.time()
    if not stream:
        async with session.post(URL + "/v1/chat/completions", json=body) as r:
            data = await r.json()
        return data["usage"]["completion_tokens"], 0.0, time.time() - t0
    body["stream_options"] = {"include_usage": True}
    first, tokens = 0.0, 0
    async with session.post(URL + "/v1/chat/completions", json=body) as r:
        async for line in r.content:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content") and not first:
                first = time.time() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, first, time.time() - t0


async def level(session, concurrency: int, requests: int, max_tokens: int) -> dict:
    sem = asyncio.Semaphore(concurrency)

    async def go(i):
        async with sem:
            return await one(session, f"{i}. {STORY}", max_tokens)

    t0 = time.time()
    done = await asyncio.gather(*(go(i) for i in range(requests)))
    wall = time.time() - t0
    tokens = sum(d[0] for d in done)
    return {"concurrency": concurrency, "requests": requests, "max_tokens": max_tokens,
            "output_tokens": tokens, "wall_s": round(wall, 2), "output_tok_s": round(tokens / wall)}


async def main() -> None:
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        await one(session, STORY, 16)  # warm-up
        long_prompt = "Summarise this log:\n" + "\n".join(f"line {i}: order #W{i:07d} shipped to zip 9{i:04d}"
                                                          for i in range(300))
        tokens, ttft, wall = await one(session, long_prompt, 256, stream=True)
        single = {"prompt": "~4k tokens", "output_tokens": tokens, "ttft_s": round(ttft, 3),
                  "decode_tok_s": round((tokens - 1) / max(wall - ttft, 1e-9), 1), "wall_s": round(wall, 2)}
        levels = [await level(session, c, n, 256) for c, n in LEVELS]
    print(json.dumps({"single_request": single, "levels": levels}, indent=2))


asyncio.run(main())
