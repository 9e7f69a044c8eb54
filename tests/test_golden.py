"""What a user sees is as it was before the launcher became a package: --help, --version, dry-run plans,
bad-input messages and the HTML pages, byte for byte (tests/golden/record.py); and an output folder
written by that version (0.2.0) resumes with no request sent."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_launcher

GOLDEN = ROOT / "tests" / "golden"


def test_outputs_match_the_recording(tmp_path: Path):
    subprocess.run([sys.executable, str(GOLDEN / "record.py"), str(tmp_path / "now")], check=True,
                   capture_output=True, timeout=300)
    expected = sorted(p.name for p in (GOLDEN / "expected").iterdir())
    assert sorted(p.name for p in (tmp_path / "now").iterdir()) == expected
    changed = [name for name in expected
               if (tmp_path / "now" / name).read_bytes() != (GOLDEN / "expected" / name).read_bytes()]
    assert not changed, f"outputs differ from tests/golden/expected: {changed}"


def test_an_output_folder_of_version_0_2_0_resumes_with_no_request(tmp_path: Path, standins):
    port = standins.start()
    config = tmp_path / "endpoints.json"
    config.write_text(json.dumps({"standin": [{"ip_addr": "127.0.0.1", "port": str(port)}]}))
    shutil.copytree(GOLDEN / "inputs" / "output_folder", tmp_path / "out")
    result = run_launcher(["--skip-server-start", "--model-config-path", str(config), "--user-llm", "standin",
                           "--domains", "mock", "--num-trials", "2", "--output-dir", str(tmp_path / "out"),
                           "--log-dir", str(tmp_path / "logs")])
    assert result.returncode == 0, result.stderr
    assert "mock: resuming, 18/18 simulations already done" in result.stdout
    assert standins.stats(port)["chat_requests"] == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["domains"]["mock"]["simulations"] == 18 and summary["domains"]["mock"]["status"] == "complete"
