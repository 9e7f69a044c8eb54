"""Small helpers every layer may use: files written atomically, timestamps, secrets kept out of what is
written, package versions, and the command that runs this launcher again.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import sys
import tempfile
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

SECRET_ENV_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET")


SECRET_FLAG_WORDS = {"key", "token", "secret", "password"}


def atomic_write(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def command_words(argv: Sequence[str]) -> list[str]:
    """The command line as single words, with --vllm-arg contents and --flag=value pairs split apart."""
    words = []
    for arg in argv:
        for word in shlex.split(arg.removeprefix("--vllm-arg=")):
            words += word.split("=", 1) if word.startswith("--") else [word]
    return words


def is_secret_flag(word: str) -> bool:
    """A flag whose value is a secret (--api-key, --hf-token, ...); --api-key-env's is only a variable's name."""
    return (word.startswith("--") and word != "--api-key-env"
            and bool(SECRET_FLAG_WORDS & set(word.lstrip("-").replace("_", "-").split("-"))))


def secret_values(env: dict[str, str], argv: Sequence[str] = (), known: Iterable[str] = ()) -> tuple[str, ...]:
    """Values that must never reach an output or a log: API keys and tokens from the environment, the
    value of any --api-key/--token flag on the command line (also inside --vllm-arg) and of the variable
    --api-key-env names, and `known` ones (the run's key)."""
    words = command_words(argv)
    flagged = [value for flag, value in zip(words, words[1:], strict=False) if is_secret_flag(flag)]
    named = [env.get(name, "") for flag, name in zip(words, words[1:], strict=False) if flag == "--api-key-env"]
    from_env = [v for k, v in env.items() if k.endswith(SECRET_ENV_SUFFIXES) and len(v) >= 8]
    values = {*from_env, *flagged, *named, *known} - {""}
    return tuple(sorted(values, key=len, reverse=True))  # longest first: no partial redaction


def now_iso() -> str:
    return datetime.now(UTC).astimezone().isoformat(timespec="milliseconds")


def package_version(*names: str) -> str | None:
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{name} {metadata.version(name)}"
    return None


def launcher_argv() -> list[str]:
    """How to run this launcher again (the rerun hint, the manifest, a job script): run_local.py where it
    stands beside the package, as users type it; the package's module elsewhere."""
    script = Path(__file__).resolve().parent.parent / "run_local.py"
    return [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "tau2_run_local"]
