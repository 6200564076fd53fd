"""The images and the package: the Dockerfiles, read here the way `docker build` reads them.

No container engine is needed: the tests parse the Dockerfiles, lint them with hadolint and
run their build recipe on this machine, so the image recipe and the package cannot drift apart.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = {"worker": REPO / "Dockerfile.worker", "operator": REPO / "Dockerfile.operator"}
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: RUN, COPY, ...
    value: str  # the rest, continuation lines joined, comment lines dropped
    line: int  # where it starts (1-based)


@dataclass
class Stage:
    base: str  # the FROM image, unexpanded (`${BASE_IMAGE}`)
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def commands(self) -> list[list[str]]:
        """Every shell command of every RUN, split at `&&`, `;` and `|`."""
        return [command for run in self.all("RUN") for command in shell_commands(run.value)]


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str | None]  # ARGs before the first FROM, with their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage(self, name: str) -> Stage:
        matches = [s for s in self.stages if s.name == name]
        assert matches, f"{self.path.name}: no stage named {name!r}"
        return matches[0]


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with continuations joined; comment and blank lines dropped, also inside a RUN."""
    joined: list[tuple[int, str]] = []
    start = 0
    parts: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not parts:
            start = number
        if stripped.endswith("\\"):
            parts.append(raw.rstrip()[:-1].strip())
            continue
        parts.append(stripped)
        joined.append((start, " ".join(parts)))
        parts = []
    assert not parts, "a continuation line ends the file"
    return joined


def _arg(value: str) -> tuple[str, str | None]:
    name, sep, default = value.partition("=")
    if not sep:
        return name.strip(), None
    return name.strip(), (shlex.split(default) or [""])[0]


@cache
def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for line, content in _logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, value = content.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name, line=line))
        elif not stages:
            assert keyword == "ARG", f"{path.name}:{line}: only ARG may come before FROM"
            key, default = _arg(value)
            global_args[key] = default
        else:
            stages[-1].instructions.append(Instruction(keyword, value, line))
    return Dockerfile(path, global_args, stages)


def shell_commands(script: str) -> list[list[str]]:
    """A RUN's shell script as argv lists, split at `&&`, `||`, `;` and `|`."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def without_env(argv: list[str]) -> list[str]:
    """The command without leading `NAME=value` assignments (`DEBIAN_FRONTEND=... apt-get`)."""
    index = 0
    while index < len(argv) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[index]):
        index += 1
    return argv[index:]


def apt_installs(stage: Stage) -> list[str]:
    """The packages the stage's `apt-get install` commands name."""
    packages: list[str] = []
    for command in map(without_env, stage.commands()):
        if command[:2] == ["apt-get", "install"]:
            packages += [word for word in command[2:] if not word.startswith("-")]
    return packages


def is_pip(argv: list[str], subcommand: str) -> bool:
    return bool(argv) and Path(argv[0]).name.startswith("pip") and subcommand in argv[1:]


def build_recipe(dockerfile: Dockerfile) -> list[list[str]]:
    """The build stage's RUN that builds the wheel and installs it, as argv lists."""
    build = dockerfile.stage("build")
    runs = [
        commands
        for commands in (shell_commands(run.value) for run in build.all("RUN"))
        if any(is_pip(c, "wheel") for c in commands)
    ]
    assert len(runs) == 1, f"{dockerfile.path.name}: expected one RUN with `pip wheel`"
    return runs[0]


def pip_install(dockerfile: Dockerfile) -> list[str]:
    installs = [c for c in build_recipe(dockerfile) if is_pip(c, "install")]
    assert len(installs) == 1, f"{dockerfile.path.name}: expected one `pip install`"
    return installs[0]


@cache
def _ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (is_exception, regex), in file order (the last match decides)."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = line.removeprefix("!").strip().strip("/")
        regex = ""
        index = 0
        while index < len(pattern):
            if pattern.startswith("**/", index):
                regex, index = regex + "(?:.*/)?", index + 3
            elif pattern.startswith("**", index):
                regex, index = regex + ".*", index + 2
            elif pattern[index] == "*":
                regex, index = regex + "[^/]*", index + 1
            elif pattern[index] == "?":
                regex, index = regex + "[^/]", index + 1
            elif pattern[index] == "[":
                end = pattern.index("]", index)
                regex, index = regex + pattern[index : end + 1], end + 1
            else:
                regex, index = regex + re.escape(pattern[index]), index + 1
        rules.append((exception, re.compile(regex)))
    return rules


def ignored(relative: str) -> bool:
    """Whether .dockerignore keeps this path (relative to the context) out of the context.

    As Docker decides: every rule that matches the path or a directory above it sets the
    verdict, in file order, so the last such rule wins.
    """
    parts = Path(relative).parts
    prefixes = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
    verdict = False
    for exception, regex in _ignore_rules():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            verdict = not exception
    return verdict
