"""Read docker/ files the way Docker and compose do, to rebuild an image's file set and commands without an engine."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKER = REPO_ROOT / "docker"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, ENV, COPY, RUN, ...
    arguments: str


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """Instructions in order, with backslash-continued lines joined and comment lines dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, arguments = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    """CMD/ENTRYPOINT/COPY arguments: the JSON array form, else split like a shell would."""
    if arguments.startswith("["):
        return json.loads(arguments)
    return shlex.split(arguments)


def env_assignments(arguments: str) -> dict[str, str]:
    """ENV key=value pairs (the legacy `ENV key value` form too)."""
    words = shlex.split(arguments)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    """(sources relative to the build context, destination) of a COPY without --from."""
    words = [word for word in exec_form(instruction.arguments) if not word.startswith("--")]
    return words[:-1], words[-1]


def dockerignore_patterns(context: Path) -> list[str]:
    ignore_file = context / ".dockerignore"
    if not ignore_file.exists():
        return []
    lines = [line.strip() for line in ignore_file.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def is_ignored(relative: PurePosixPath, patterns: list[str]) -> bool:
    """Docker's rule, for the patterns this repository uses: a path is excluded when it or a parent matches."""
    candidates = [relative, *relative.parents][:-1]  # drop "."
    for pattern in patterns:
        pattern = pattern.rstrip("/")
        bare = pattern[3:] if pattern.startswith("**/") else None
        for candidate in candidates:
            if fnmatch.fnmatchcase(str(candidate), pattern):
                return True
            if bare is not None and fnmatch.fnmatchcase(candidate.name, bare):
                return True
    return False


def copy_into(*, context: Path, sources: list[str], destination: Path, into_folder: bool) -> None:
    """One COPY: a folder's contents go into the destination; files go into it when it is a folder."""
    patterns = dockerignore_patterns(context)
    for source in sources:
        source_path = context / source
        if source_path.is_dir():
            for path in sorted(source_path.rglob("*")):
                relative = PurePosixPath(path.relative_to(context).as_posix())
                if path.is_dir() or is_ignored(relative, patterns):
                    continue
                target = destination / path.relative_to(source_path)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        else:
            target = destination / source_path.name if into_folder else destination
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source_path, target)


def compose_substitute(value: str, variables: dict[str, str]) -> str:
    """compose's ${VAR}, ${VAR:-default} and ${VAR:?error} interpolation (and $$ for a literal $)."""

    def replace(match: re.Match) -> str:
        name, operator, word = match.group(1), match.group(2), match.group(3) or ""
        current = variables.get(name, "")
        if operator == ":?" and not current:
            raise KeyError(f"compose needs {name}: {word}")
        if operator == ":-" and not current:
            return word
        return current

    value = re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", replace, value.replace("$$", "\0"))
    return value.replace("\0", "$")
