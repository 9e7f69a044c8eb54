"""What the servers are sent stays as it was, byte for byte: the request bodies of a fixed set of
simulations (every mock task, the first task of each other domain, one at a time) against the
stand-in, compared with tests/golden/requests.jsonl, recorded from the launcher before its client was
made lean (issue 17: tool schemas, databases and litellm's per-call work done once). Recorded again from
that launcher (992ad7b) when the stand-in's telecom user began calling its tools: today's gave the same bytes.

To record it again (only when a change of the requests is meant): python tests/test_requests.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import ROOT, Standins, run_launcher

RECORDED = ROOT / "tests" / "golden" / "requests.jsonl"
RUNS = (["--domains", "mock"], ["--domains", "retail", "airline", "telecom", "--num-tasks", "1"])


def record_requests(tmp: Path, standins: Standins) -> list[bytes]:
    """The bodies the stand-in received, in order, for the fixed set of simulations."""
    record = tmp / "requests.jsonl"
    port = standins.start(record=str(record))
    config = tmp / "endpoints.json"
    config.write_text(json.dumps({"standin": [{"ip_addr": "127.0.0.1", "port": str(port)}]}))
    for i, which in enumerate(RUNS):
        result = run_launcher(["--skip-server-start", "--model-config-path", str(config), "--user-llm", "standin",
                               *which, "--max-concurrency", "1", "--max-steps", "30", "--skip-preflight",
                               "--output-dir", str(tmp / f"out{i}"), "--log-dir", str(tmp / f"logs{i}")],
                              env={"OPENAI_API_KEY": ""})
        assert result.returncode == 0, result.stderr
    return record.read_bytes().splitlines()


def first_difference(got: list[bytes], want: list[bytes]) -> str:
    for i, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            one, other = json.loads(a), json.loads(b)
            keys = sorted(k for k in one.keys() | other.keys() if one.get(k) != other.get(k))
            return f"request {i} differs in {keys}"
    return f"{len(got)} requests, {len(want)} recorded"


def test_request_bodies_are_as_recorded(tmp_path: Path, standins: Standins):
    got, want = record_requests(tmp_path, standins), RECORDED.read_bytes().splitlines()
    assert got == want, first_difference(got, want)


if __name__ == "__main__":
    import tempfile

    servers = Standins()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            bodies = record_requests(Path(tmp), servers)
        finally:
            for port in list(servers.procs):
                servers.stop(port)
    RECORDED.write_bytes(b"".join(body + b"\n" for body in bodies))
    print(f"wrote {len(bodies)} requests to {RECORDED}", file=sys.stderr)
