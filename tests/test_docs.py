"""Both guides, English and Chinese, document every option that --help lists, and link to each other."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT
from tau2_run_local.settings import build_parser

GUIDES = ("README.md", "README.zh-CN.md")


def help_options() -> list[str]:
    return [opt for action in build_parser()._actions for opt in action.option_strings if opt.startswith("--")]


@pytest.mark.parametrize("guide", GUIDES)
def test_every_help_option_is_in_the_guide(guide: str):
    text = (ROOT / guide).read_text()
    assert len(help_options()) > 40
    missing = [opt for opt in help_options() if not re.search(re.escape(opt) + r"(?![\w-])", text)]
    assert not missing, f"{guide} does not mention {', '.join(missing)}"


def test_guides_link_to_each_other_near_the_top():
    english, chinese = ((ROOT / g).read_text().splitlines()[:5] for g in GUIDES)
    assert any("(README.zh-CN.md)" in line for line in english)
    assert any("(README.md)" in line for line in chinese)


def test_readme_keeps_its_two_setup_commands_and_shows_the_report():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Try it: two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split()[0:2] for line in block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
    assert "](docs/report.png)" in text and (ROOT / "docs" / "report.png").is_file()
    assert "tau2 view --file" in text
