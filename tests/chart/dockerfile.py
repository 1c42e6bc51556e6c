"""Read the Dockerfile and .dockerignore the way ``docker build`` does, for tests.

Only what the tests need: stages (``FROM`` ... ``AS``), instructions with line continuations
joined, ``ARG`` defaults substituted, and ``.dockerignore`` matching (Go ``filepath.Match``
patterns with ``**``, as BuildKit's patternmatcher; later ``!`` lines re-include).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Instruction:
    """One Dockerfile instruction: ``keyword`` (upper case) and its raw ``value``."""

    keyword: str
    value: str

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of CMD/ENTRYPOINT/RUN as a list, or None for shell form."""
        text = self.value.strip()
        if text.startswith("["):
            parsed = json.loads(text)
            assert isinstance(parsed, list), f"{self.keyword}: exec form must be a JSON list"
            return [str(x) for x in parsed]
        return None


@dataclass
class Stage:
    """A build stage: its base image (ARGs substituted), name and instructions."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    raw_base: str = ""
    """The ``FROM`` argument as written (``${BASE_IMAGE}``, an earlier stage's name ...)."""

    def all(self, keyword: str) -> list[Instruction]:
        """The stage's instructions with this keyword, in order."""
        return [i for i in self.instructions if i.keyword == keyword]


def build_args(path: Path) -> dict[str, str]:
    """The ``ARG`` defaults declared before the first ``FROM`` (the base images' arguments)."""
    args: dict[str, str] = {}
    for line in path.read_text().splitlines():
        keyword, _, value = line.strip().partition(" ")
        if keyword.upper() == "FROM":
            break
        if keyword.upper() == "ARG":
            key, _, default = value.partition("=")
            args[key.strip()] = default.strip()
    return args


def parse_dockerfile(path: Path) -> list[Stage]:
    """Parse a Dockerfile into stages.

    Args:
        path: The Dockerfile.

    Returns:
        The stages in order; ``ARG`` defaults declared before the first ``FROM`` are
        substituted into each base image.

    Raises:
        ValueError: an instruction precedes the first ``FROM`` (other than ``ARG``), or a
            base image uses an ARG with no default.
    """
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment lines inside a continuation are dropped, as docker does
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    if buf:
        logical.append(buf)

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for text in logical:
        keyword, _, value = text.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = value.split()
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: _arg(args, m.group(1) or m.group(2)), parts[0]
            )
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name, raw_base=parts[0]))
        elif not stages:
            if keyword != "ARG":
                raise ValueError(f"{path}: {keyword} before the first FROM")
            key, _, default = value.partition("=")
            args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, value.strip()))
    return stages


def _arg(args: dict[str, str], name: str) -> str:
    if not args.get(name):
        raise ValueError(f"Dockerfile: base image uses ARG {name} without a default")
    return args[name]


SHELL_KEYWORDS = {"if", "then", "else", "elif", "fi", "!", "do", "done", "{", "}"}


def run_commands(stage: Stage) -> list[list[str]]:
    """Split each shell-form RUN of a stage into its simple commands (argv lists).

    Shell keywords (``if``, ``then``, ``!`` ...) and leading ``VAR=value`` assignments are
    dropped, so ``if ! command -v wget`` reads as ``command -v wget`` and
    ``PYTHONPATH=x lorafleet --help`` as ``lorafleet --help``.
    """
    commands: list[list[str]] = []
    for inst in stage.all("RUN"):
        exec_form = inst.exec_form()
        if exec_form is not None:
            commands.append(exec_form)
            continue
        for words in _simple_commands(inst.value):
            while words and (
                words[0] in SHELL_KEYWORDS or re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0])
            ):
                words = words[1:]
            if words:
                commands.append(words)
    return commands


def _simple_commands(text: str) -> list[list[str]]:
    """Split shell text on ``&&``, ``||``, ``;`` and ``|`` outside quotes; drop redirections."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    tokens = list(lexer)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        elif token in {">", ">>", "<", ">&"}:
            i += 1  # the redirection's target
        else:
            commands[-1].append(token)
        i += 1
    return [c for c in commands if c]


def ignored(rel_path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` patterns exclude a context path (``a/b/c.py``)."""
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if _matches(rel_path, pattern):
            result = not negate
    return result


def _matches(path: str, pattern: str) -> bool:
    # A pattern matching a directory excludes everything under it.
    parts = path.split("/")
    for end in range(1, len(parts) + 1):
        prefix = "/".join(parts[:end])
        if pattern.startswith("**/"):
            if any(
                fnmatch.fnmatchcase("/".join(parts[start:end]), pattern[3:]) for start in range(end)
            ):
                return True
        elif fnmatch.fnmatchcase(prefix, pattern):
            return True
    return False


def read_dockerignore(path: Path) -> list[str]:
    """The non-comment, non-empty lines of a ``.dockerignore``."""
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
