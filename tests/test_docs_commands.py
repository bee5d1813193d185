"""The documentation shows only commands the code accepts and links that resolve.

A user copies commands from README.md and docs/*.md. Each ``diff2scene ...`` command there
(code blocks and inline code, ``python -m diff2scene.cli ...`` and ``docker run ... diff2scene
diff2scene ...`` included) must name a subcommand that exists and only flags it accepts; a
command in a code block must also parse as written, with placeholders such as ``N`` or
``RATE`` standing for valid values. ``-p NAME:=VALUE`` must name a declared node parameter
(the generated docs/ros_api.md lists them), ``ros2 run``/``ros2 launch`` an executable or
launch file of the package, ``make`` a Makefile target and ``python -m`` a module that exists.

All of it runs against one in-process argparse parser (``diff2scene.cli.build_parser``), not a
process per command. The same file checks that relative links in the docs point at files and
headings that exist, and that no tracked file cites a design or style document the repository
does not contain.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import re
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from diff2scene.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted(
    [REPO / "README.md", REPO / "docker" / "README.md", *(REPO / "docs").glob("*.md")]
)
#: Fenced blocks of these languages hold shell commands (an unlabelled fence too); diagrams
#: and file trees are fenced as ``text`` and are not read as commands.
SHELL_FENCES = frozenset({"", "bash", "sh", "shell", "console"})
#: Words before a command that do not change which program runs.
PREFIX_WORDS = frozenset({"$", "sudo", "exec", "time", "env", "nohup"})
#: ``docker run`` options that take a value as the next word.
DOCKER_VALUE_OPTIONS = frozenset({
    "-e", "--env", "-v", "--volume", "--gpus", "-p", "--publish", "--name", "-w", "--workdir",
    "--network", "--net", "--user", "-u", "--entrypoint", "--env-file", "--mount",
})  # fmt: skip
PYTHONS = re.compile(r"^(?:\S*/)?(?:python3?(?:\.\d+)?|torchrun)$")
PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass(frozen=True)
class DocCommand:
    """One command found in a Markdown file."""

    where: str  # "README.md:12"
    words: tuple[str, ...]  # the command from its program on, shell-split
    in_code_block: bool  # code-block commands must parse as written, inline ones be valid


# --------------------------------------------------------------------------- extraction


def _code_blocks_and_prose(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(line number, line) of shell code blocks, and of everything outside code blocks."""
    shell: list[tuple[int, str]] = []
    prose: list[tuple[int, str]] = []
    fence: str | None = None  # the open fence's language, None outside a block
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip().lower() if fence is None else None
        elif fence is None:
            prose.append((number, line))
        elif fence in SHELL_FENCES:
            shell.append((number, line))
    return shell, prose


def _join_continuations(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines ending in a backslash joined with the next, numbered by their first line."""
    joined: list[tuple[int, str]] = []
    pending: tuple[int, str] | None = None
    for number, line in lines:
        start, text = (number, line) if pending is None else (
            pending[0], pending[1] + " " + line.strip()
        )
        if text.rstrip().endswith("\\"):
            pending = (start, text.rstrip()[:-1])
        else:
            joined.append((start, text))
            pending = None
    if pending is not None:
        joined.append(pending)
    return joined


def _segments(words: list[str]) -> list[list[str]]:
    """Simple commands of a shell-split line (split at ``&&``, ``|``, ``;``, ``(``, ...)."""
    segments: list[list[str]] = [[]]
    for word in words:
        if word and set(word) <= set("();<>|&"):
            segments.append([])
        else:
            segments[-1].append(word)
    return [s for s in segments if s]


def _program_words(segment: list[str]) -> list[str]:
    """The segment from its program on: environment assignments and prefixes dropped, and
    ``docker run [options] IMAGE`` replaced by the command it runs in the container."""
    i = 0
    while i < len(segment) and (ENV_ASSIGNMENT.match(segment[i]) or segment[i] in PREFIX_WORDS):
        i += 1
    words = segment[i:]
    if words[:2] == ["docker", "run"]:
        j = 2
        while j < len(words) and words[j].startswith("-"):
            j += 2 if words[j] in DOCKER_VALUE_OPTIONS else 1
        return _program_words(words[j + 1 :]) if j + 1 < len(words) else []
    return words


def commands_in_line(line: str) -> list[list[str]]:
    """Every command of one shell line or inline-code span, from its program on.

    Raises ValueError for a line the shell could not split (an unbalanced quote)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    found = []
    for segment in _segments(list(lexer)):
        words = _program_words(segment)
        if words:
            found.append(words)
    return found


def _is_checked(words: list[str]) -> bool:
    program = words[0]
    return (
        program in ("diff2scene", "make", "ros2")
        or (PYTHONS.match(program) is not None and "-m" in words)
        or "--ros-args" in words  # the node started by its path
    )


def extract_commands(text: str, name: str) -> list[DocCommand]:
    """The commands this test checks, from a Markdown file's text: shell code blocks line by
    line, and inline code spans outside code blocks."""
    shell, prose = _code_blocks_and_prose(text)
    spans = [
        (number, span)
        for number, line in prose
        for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", line)
    ]
    found: list[DocCommand] = []
    for lines, in_block in ((_join_continuations(shell), True), (spans, False)):
        for number, line in lines:
            if not re.search(r"\b(?:diff2scene|make|ros2|python3?|torchrun)\b|--ros-args", line):
                continue
            try:
                commands = commands_in_line(line)
            except ValueError as exc:
                raise AssertionError(f"{name}:{number}: cannot split {line!r}: {exc}") from exc
            found += [
                DocCommand(f"{name}:{number}", tuple(words), in_block)
                for words in commands
                if _is_checked(words)
            ]
    return found


# --------------------------------------------------------------------------- checking


@functools.cache
def _parser() -> argparse.ArgumentParser:
    return build_parser()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("diff2scene's parser has no subcommands")


def _clean(words: tuple[str, ...] | list[str]) -> list[str]:
    """Usage notation removed: ``[--flag X]`` → ``--flag X``; ``...`` dropped."""
    cleaned = [w.strip("[]") for w in words]
    return [w for w in cleaned if w and w not in ("...", "…")]


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _value_for(action: argparse.Action, word: str) -> str:
    """``word`` as the value of ``action``, a placeholder (``N``, ``RATE``) replaced by a
    value the action accepts; a real value is passed on unchanged to fail where it should."""
    if not PLACEHOLDER.match(word):
        return word
    if action.choices is not None:
        return str(next(iter(action.choices)))
    if action.type in (int, float):
        return "1"
    return word


def check_diff2scene(words: tuple[str, ...] | list[str], *, parse: bool) -> list[str]:
    """Problems of one ``diff2scene ...`` command (empty when it is valid).

    The subcommand must exist and every ``--flag`` must be one it declares, spelled out in
    full (argparse would also take an abbreviation; the docs should not rely on that). With
    ``parse`` the command must also parse as written, placeholders standing for valid values;
    without it (a mention in prose) a subcommand without its arguments is fine."""
    parser = _parser()
    args = _clean(words)[1:]
    while args and args[0].startswith("-"):  # options of diff2scene itself (-v)
        if args[0] not in parser._option_string_actions:
            return [f"diff2scene has no option {args[0]}"]
        args = args[1:]
    if not args:
        return []  # the program's name alone
    commands = _subparsers(parser)
    name, rest = args[0], args[1:]
    if name not in commands:
        return [f"unknown subcommand {name!r} (known: {', '.join(sorted(commands))})"]
    sub = commands[name]
    problems = []
    substituted = [name]
    i = 0
    while i < len(rest):
        word = rest[i]
        i += 1
        if not word.startswith("-") or word == "-" or _is_number(word):
            substituted.append(word)
            continue
        flag, has_value, value = word.partition("=")
        action = sub._option_string_actions.get(flag)
        if action is None:
            problems.append(f"diff2scene {name} has no option {flag}")
            continue
        if action.nargs == argparse.REMAINDER:
            substituted += rest[i - 1 :]  # e.g. --ros-args: the rest belongs to the node
            break
        if has_value:
            substituted.append(f"{flag}={_value_for(action, value)}")
        elif action.nargs is None and i < len(rest):
            substituted += [flag, _value_for(action, rest[i])]
            i += 1
        else:
            substituted.append(flag)
    if problems or not parse:
        return problems
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(substituted)
    except SystemExit as exc:
        if exc.code not in (0, None):  # --help exits 0
            lines = stderr.getvalue().strip().splitlines()
            return [lines[-1] if lines else f"exit {exc.code}"]
    return []


@functools.cache
def declared_parameters() -> frozenset[str]:
    """The node's parameters, from the table of the generated docs/ros_api.md."""
    text = (REPO / "docs" / "ros_api.md").read_text(encoding="utf-8")
    names = frozenset(re.findall(r"^\| `([a-z][\w.]*)` \|", text, re.M))
    assert len(names) > 50, "docs/ros_api.md lists no parameters"
    return names


def check_ros_args(words: tuple[str, ...] | list[str]) -> list[str]:
    """``-p NAME:=VALUE`` pairs after ``--ros-args`` must name declared parameters."""
    words = list(words)
    if "--ros-args" not in words:
        return []
    after = words[words.index("--ros-args") + 1 :]
    names = [after[k + 1].split(":=")[0] for k, w in enumerate(after[:-1]) if w == "-p"]
    unknown = [n for n in names  # "-p NAME:=VALUE", "-p name:=value" show the syntax
               if n not in declared_parameters() and n.lower() != "name"]
    return [f"the node declares no parameter {n!r}" for n in unknown]


@functools.cache
def make_targets() -> frozenset[str]:
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    return frozenset(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, re.M))


def _package_executables() -> set[str]:
    setup = (REPO / "ros2_ws" / "src" / "diff2scene" / "setup.py").read_text(encoding="utf-8")
    return set(re.findall(r"\"(\w+) = [\w.]+:\w+\"", setup))


def check_command(command: DocCommand) -> list[str]:
    """Problems of one documented command, whatever its program."""
    words = command.words
    program = words[0]
    if PYTHONS.match(program):
        module = words[words.index("-m") + 1] if words.index("-m") + 1 < len(words) else ""
        if module == "diff2scene.cli":
            return check_diff2scene(("diff2scene", *words[words.index("-m") + 2 :]),
                                    parse=command.in_code_block)  # fmt: skip
        if module in ("", "...", "…") or PLACEHOLDER.match(module):
            return []  # "python -m ..." in prose, "python -m MODULE"
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # its package is missing, or the name is malformed
            found = False
        return [] if found else [f"no module {module!r}"]
    if program == "diff2scene":
        return check_diff2scene(words, parse=command.in_code_block) + check_ros_args(words)
    if program == "make":
        targets = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return [f"no Makefile target {t!r}" for t in targets if t not in make_targets()]
    if program == "ros2" and len(words) >= 4 and words[2] == "diff2scene":
        if words[1] == "run" and words[3] not in _package_executables():
            return [f"the package has no executable {words[3]!r}"]
        if words[1] == "launch" and not (REPO / "launch" / words[3]).is_file():
            return [f"no launch file launch/{words[3]}"]
    return check_ros_args(words)  # e.g. install/.../diff2scene_node --ros-args -p ...


def _doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


# --------------------------------------------------------------------------- the docs


@pytest.mark.parametrize("path", DOCS, ids=_doc_id)
def test_documented_commands_parse(path: Path) -> None:
    commands = extract_commands(path.read_text(encoding="utf-8"), _doc_id(path))
    problems = [f"{c.where}: {' '.join(c.words)}\n    {p}" for c in commands
                for p in check_command(c)]  # fmt: skip
    assert not problems, "\n".join(problems)


def test_the_docs_show_every_subcommand() -> None:
    """Every subcommand is documented somewhere a user would look."""
    shown = {
        c.words[1]
        for path in DOCS
        for c in extract_commands(path.read_text(encoding="utf-8"), _doc_id(path))
        if c.words[0] == "diff2scene" and len(c.words) > 1
    }
    assert set(_subparsers(_parser())) <= shown, sorted(set(_subparsers(_parser())) - shown)


def test_readme_is_short_and_names_the_main_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for command in ("make demo", "make test", "make bench"):
        assert f"{command}" in text


# --------------------------------------------------------------------------- the checker


def _problems(markdown: str) -> list[str]:
    return [p for c in extract_commands(markdown, "t.md") for p in check_command(c)]


def test_checker_accepts_valid_commands() -> None:
    markdown = "\n".join([
        "Run `diff2scene replay BAG --out DIR --realtime RATE` or `make demo`.",
        "```bash",
        "diff2scene synth --out DIR --seed N [--frames N --width W --height H]  # a room",
        "diff2scene replay BAG --out DIR [--config replay.yaml] [--queries F] \\",
        "    [--realtime R]",
        "source .venv/bin/activate && diff2scene query \"the mug on the table\" --top-k 3",
        "diff2scene bringup --params FILE --ros-args -p segmenter.profile:=tiny --log-level debug",
        "docker run --rm --net=host -e ROS_DOMAIN_ID=0 diff2scene diff2scene bringup --print",
        "torchrun --nproc_per_node=4 -m diff2scene.cli train CONFIG.yaml",
        "ros2 run diff2scene diff2scene_node --ros-args -p segmenter.kind:=oracle",
        "ros2 launch diff2scene bringup.launch.py",
        "install/diff2scene/lib/diff2scene/diff2scene_node --ros-args -p map_dir:=/maps",
        "```",
        "```text",
        "diff2scene nonsense --in-a-diagram",
        "```",
    ])  # fmt: skip
    assert len(extract_commands(markdown, "t.md")) == 11
    assert _problems(markdown) == []


@pytest.mark.parametrize(
    ("markdown", "expected"),
    [
        ("`diff2scene replay BAG --out DIR --realtiem 4`", "has no option --realtiem"),
        ("```bash\ndiff2scene repaly BAG --out DIR\n```", "unknown subcommand 'repaly'"),
        ("```\ndiff2scene replay BAG\n```", "required: --out"),  # parsed as written
        ("```sh\ndiff2scene synth --out D --seed seven\n```", "invalid int value"),
        ("```\ndiff2scene query x --top 3\n```", "has no option --top"),  # no abbreviations
        ("`diff2scene -x synth`", "diff2scene has no option -x"),
        ("`python -m diff2scene.cli evaluate MAP`", "unknown subcommand 'evaluate'"),
        ("`diff2scene bringup --ros-args -p segmenter.profil:=tiny`", "no parameter"),
        ("```\ndocker run --rm diff2scene diff2scene bringup --param F\n```", "no option"),
        ("`make benchmark`", "no Makefile target 'benchmark'"),
        ("`ros2 run diff2scene diff2scene_nod`", "no executable"),
        ("```\n./diff2scene_node --ros-args -p map_directory:=/m\n```", "no parameter"),
        ("`python -m bench.no_such_benchmark`", "no module"),
    ],
)
def test_checker_rejects_bad_commands(markdown: str, expected: str) -> None:
    problems = _problems(markdown)
    assert any(expected in p for p in problems), problems


def test_checker_reports_an_unsplittable_line() -> None:
    with pytest.raises(AssertionError, match="cannot split"):
        extract_commands("```\ndiff2scene query \"the mug\n```", "t.md")


# --------------------------------------------------------------------------- links


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading: lower case, punctuation dropped, spaces → -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    _, prose = _code_blocks_and_prose(path.read_text(encoding="utf-8"))
    return {github_anchor(m.group(1)) for _, line in prose
            if (m := re.match(r"^#{1,6}\s+(.*)$", line))}  # fmt: skip


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of the Markdown links in ``path`` that are not URLs."""
    _, prose = _code_blocks_and_prose(path.read_text(encoding="utf-8"))
    return [
        (number, target)
        for number, line in prose
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"`[^`]*`", "", line))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target)
    ]


@pytest.mark.parametrize("path", DOCS, ids=_doc_id)
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for number, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{_doc_id(path)}:{number}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{_doc_id(path)}:{number}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_github_anchor() -> None:
    assert github_anchor("Starting the node: `diff2scene bringup`") == (
        "starting-the-node-diff2scene-bringup"
    )
    assert github_anchor("Replay, benchmarks & results") == "replay-benchmarks--results"


def test_readme_links_every_guide() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    guides = {p.name for p in (REPO / "docs").glob("*.md")}
    linked = {Path(t.partition("#")[0]).name for _, t in relative_links(REPO / "README.md")}
    assert guides <= linked, sorted(guides - linked)
    assert "docs/ros_api.md" in readme


# --------------------------------------------------------------------------- references


#: Citations of documents that live outside the repository (built so that this file does not
#: contain them itself).
FOREIGN_REFERENCES = ("DESIGN " + "\u00a7", "STYLE" + " rule")


def test_no_tracked_file_cites_documents_outside_the_repository() -> None:
    """The repository stands alone: no file points a reader at a design or style document
    that is not in it."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    offenders = []
    for name in listed.decode().split("\0"):
        path = REPO / name
        if not name or path.is_symlink() or not path.is_file():
            continue  # symlinked trees (ros2_ws/src/diff2scene/*) are checked at their source
        data = path.read_bytes()
        offenders += [f"{name}: {ref!r}" for ref in FOREIGN_REFERENCES if ref.encode() in data]
    assert not offenders, "\n".join(offenders)
