"""The commands in the README and docs/ work (issue 15): a command that a doc shows and the code no longer takes fails
here, not in a reader's terminal.

Every command line of every fenced block of README.md and docs/*.md (continuations joined, comments dropped,
`&&`/`;`/`|` chains split, `VAR=value` prefixes read) is checked against the program it calls:
- `emmr ...` (also `.venv/bin/emmr`, `python -m emmr.cli`): parsed by the real `emmr` parser: subcommand, flags,
  choices and value types (the docs' synopsis notation is read as written: `[--x V]` optional, `a|b` the first
  choice, upper-case words such as N or DIR placeholders);
- `emmr-score ...`: every flag known to the job or to Beam, values of the right type (`report`, `export`: their own
  parsers);
- `make TARGET`: the Makefile has the target; `python SCRIPT ...` and `*.sh`: the script exists, and a Python
  script's `--help` runs and lists every flag the doc gives it (slow: each imports its modules);
- commands run from a snapshot of an older commit (`git archive C | tar -x -C runs/src`, then `cd runs/src`) are
  parsed by that commit's `emmr` parser.
Inline code in the prose (`emmr train --epochs N`) is checked the same way where it names flags. The cheap commands
are also run for real, as written (in a scratch folder that has ../shared): every `emmr synth` and
`emmr convert mosi-utterance-csv` of the docs, `emmr-score --help`, `make help`; and `make demo`, the README's
first command, runs end to end (slow). The streaming demo runs in tests/test_demo_streaming.py.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_TOOLS = {"cd", "mkdir", "cp", "mv", "git", "tar", "tee", "export", "cat", "ls", "rm"}
PLACEHOLDER = re.compile(r"^(<[^>]*>|[A-Z][A-Z0-9_]*|\$[A-Za-z_]+.*|.*\.\.\..*)$")


@dataclass
class Command:
    where: str  # file:line
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    snapshot: str | None = None  # the commit whose code runs it (cd runs/src after git archive COMMIT)
    inline: bool = False  # from the prose: may leave out required flags

    def __str__(self) -> str:
        return f"{self.where}: {' '.join(self.argv)}"


def _segments(line: str) -> list[list[str]]:
    """A shell line -> its simple commands (tokens), split at && ; and pipes, without comments. A `|` inside a word
    is the docs' choice notation (small|paper), not a pipe."""
    out = []
    for piece in re.split(r"\s\|\s", line.replace("[", " ").replace("]", " ")):
        lexer = shlex.shlex(piece, posix=True, punctuation_chars="&;")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        current = []
        for token in lexer:
            if token in ("&&", "||", ";", "&"):
                out.append(current)
                current = []
            else:
                current.append(token)
        out.append(current)
    return [s for s in out if s]


def _blocks(text: str):
    """(first line number, lines) of each fenced block."""
    lines, start, body = text.splitlines(), None, []
    for i, line in enumerate(lines, 1):
        if line.startswith("```"):
            if start is None:
                start, body = i + 1, []
            else:
                yield start, body
                start = None
        elif start is not None:
            body.append(line)


def doc_commands() -> list[Command]:
    commands = []
    for doc in DOCS:
        text = doc.read_text()
        rel = doc.relative_to(ROOT)
        for start, body in _blocks(text):
            if body and body[0].startswith("Makefile "):  # the README's annotated tree, not commands
                continue
            logical: list[tuple[int, str]] = []  # continuations joined: a trailing backslash, or (synopsis style)
            joined, first = "", None                # an indented line that goes on with [ or --
            for n, line in enumerate(body, start):
                if logical and not joined and re.match(r"^\s+(\[|--)", line):
                    logical[-1] = (logical[-1][0], logical[-1][1] + " " + line.strip())
                    continue
                first = first or n
                if line.rstrip().endswith("\\"):
                    joined += line.rstrip()[:-1] + " "
                    continue
                logical.append((first, joined + line))
                joined, first = "", None
            snapshot, in_snapshot = None, False
            for first, joined in logical:
                for seg in _segments(joined):
                    env = {}
                    while seg and re.match(r"^[A-Z_][A-Z0-9_]*=", seg[0]):
                        key, _, value = seg.pop(0).partition("=")
                        env[key] = value
                    if not seg:
                        continue
                    if seg[0] == "git" and "archive" in seg:
                        snapshot = seg[seg.index("archive") + 1]
                    if seg[0] == "cd":
                        in_snapshot = seg[1:] == ["runs/src"] if len(seg) > 1 else False
                        continue
                    if seg[0] in SHELL_TOOLS:
                        continue
                    commands.append(Command(f"{rel}:{first}", seg, env, snapshot if in_snapshot else None))
        prose = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
        for m in re.finditer(r"`((?:emmr|emmr-score|make) [^`]*--[^`]*)`", prose):
            line = prose[: m.start()].count("\n") + 1
            commands.append(Command(f"{rel}:{line}", _segments(m.group(1))[0], inline=True))
    return commands


COMMANDS = doc_commands()


def program(c: Command) -> tuple[str, list[str]]:
    """-> (emmr | emmr-score | make | script | other, the arguments after the program)."""
    argv = list(c.argv)
    head = os.path.basename(argv[0])
    if head in ("emmr", "emmr-score", "make"):
        return head, argv[1:]
    if re.match(r"^python3?(\.\d+)?$", head):
        if argv[1:3] == ["-m", "emmr.cli"]:
            return "emmr", argv[3:]
        if argv[1:3] == ["-m", "beam_pipeline.run"]:
            return "emmr-score", argv[3:]
        return "script", argv[1:]
    if argv[0].endswith((".sh", ".py")):
        return "script", argv
    return "other", argv


def test_the_docs_have_commands_and_every_one_is_known():
    kinds = {}
    for c in COMMANDS:
        kinds.setdefault(program(c)[0], []).append(str(c))
    assert not kinds.get("other"), "commands the checker does not know:\n" + "\n".join(kinds["other"])
    assert len(kinds["emmr"]) > 20 and len(kinds["emmr-score"]) >= 4 and kinds["make"] and kinds["script"]


# --------------------------------------------------------------------------------------------- emmr


def _parser_for(parser, words: list[str]):
    """The innermost (sub)parser the leading words select, and the words left."""
    import argparse

    while words:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or words[0] not in subs[0].choices:
            break
        parser, words = subs[0].choices[words[0]], words[1:]
    return parser, words


def _fill_placeholders(parser, args: list[str]) -> list[str]:
    """Placeholder values (N, DIR, <id>, ...) of typed flags -> a value of the type; the choice `a|b` -> a."""
    sub, _ = _parser_for(parser, [a for a in args if not a.startswith("-")])
    actions = {s: a for p in {parser, sub} for a in p._actions for s in a.option_strings}
    out = []
    for i, a in enumerate(args):
        prev = actions.get(args[i - 1]) if i else None
        if "|" in a and not a.startswith("-"):
            a = a.split("|")[0]
        if prev is not None and prev.nargs != 0 and PLACEHOLDER.match(a):
            a = str(prev.choices[0]) if prev.choices else ("1" if prev.type not in (None, str) else a)
        out.append(a)
    return out


def _parse(parser, args: list[str], inline: bool) -> str | None:
    """None when the parser takes `args`; else what it said."""
    err = io.StringIO()
    args = _fill_placeholders(parser, [a for a in args if a != "..."])
    try:
        with contextlib.redirect_stderr(err):
            if inline:  # a reference in prose: the subcommand and every flag must exist
                sub, rest = _parser_for(parser, args)
                known = {s for a in sub._actions for s in a.option_strings}
                unknown = [a for a in rest if a.startswith("-") and a.split("=")[0] not in known]
                return f"unknown flags {unknown}" if unknown else None
            parser.parse_args(args)
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1]
    return None


EMMR = [c for c in COMMANDS if program(c)[0] == "emmr"]


@pytest.mark.parametrize("command", [c for c in EMMR if not c.snapshot], ids=str)
def test_every_emmr_command_in_the_docs_parses(command):
    from emmr.cli import build_parser

    problem = _parse(build_parser(), program(command)[1], command.inline)
    assert problem is None, f"{command}\n  {problem}"


SNAPSHOTS = sorted({c.snapshot for c in EMMR if c.snapshot})


@pytest.mark.slow  # extracts each commit and parses its commands with its own code
@pytest.mark.parametrize("commit", SNAPSHOTS)
def test_emmr_commands_run_from_an_older_commit_parse_with_that_commits_code(commit, tmp_path):
    if subprocess.run(["git", "cat-file", "-e", commit], cwd=ROOT, capture_output=True).returncode:
        pytest.fail(f"commit {commit}, which the docs run from, is not in this repository")
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp_path)], input=archive, check=True)
    for command in [c for c in EMMR if c.snapshot == commit]:
        code = ("import sys; from emmr.cli import build_parser; build_parser().parse_args(sys.argv[1:])")
        args = [a for a in program(command)[1] if a != "..."]
        out = subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
        assert out.returncode == 0, f"{command}\n  {out.stderr.strip().splitlines()[-1:]}"


# --------------------------------------------------------------------------------------------- emmr-score


@pytest.mark.parametrize("command", [c for c in COMMANDS if program(c)[0] == "emmr-score"], ids=str)
def test_every_emmr_score_command_in_the_docs_has_known_flags(command):
    from beam_pipeline.flags import report_parser

    args = program(command)[1]
    if args[:1] in (["report"], ["export"]):
        from beam_pipeline import exporter

        problem = _parse(report_parser() if args[0] == "report" else exporter.parser(), args[1:], inline=True)
        assert problem is None, f"{command}\n  {problem}"
        return
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline.options import OptionsError, unknown_flags

    # "--flag ..." leaves the value out: any value will do; a bare "..." stands for more flags
    args = ["x" if a == "..." and i and args[i - 1].startswith("--") and "=" not in args[i - 1] else a
            for i, a in enumerate(args)]
    args = [a for a in args if a not in ("...", "--help")]
    try:
        problems = unknown_flags(PipelineOptions(args))
    except OptionsError as e:
        problems = e.problems
    assert problems == [], f"{command}\n  {problems}"


# --------------------------------------------------------------------------------------------- make, scripts


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))


@pytest.mark.parametrize("command", [c for c in COMMANDS if program(c)[0] == "make"], ids=str)
def test_every_make_target_in_the_docs_exists(command):
    targets = [a for a in program(command)[1] if "=" not in a and not a.startswith("-")]
    assert targets and set(targets) <= make_targets(), str(command)


SCRIPTS = [c for c in COMMANDS if program(c)[0] == "script"]


def _script(command: Command) -> Path:
    path = program(command)[1][0]
    return (ROOT / "runs" / "src" / path) if command.snapshot else ROOT / path


@pytest.mark.parametrize("command", SCRIPTS, ids=str)
def test_every_script_in_the_docs_exists(command):
    path = _script(command)
    if command.snapshot:
        return  # in the snapshot: checked with the commit's code, not here
    assert path.is_file(), str(command)
    if path.suffix == ".sh":
        assert os.access(path, os.X_OK), f"{command}: not executable"


@pytest.mark.slow  # each --help imports the script's modules (torch, Beam)
def test_every_python_script_in_the_docs_takes_the_flags_it_is_given():
    problems = []
    for script in sorted({program(c)[1][0] for c in SCRIPTS if not c.snapshot and c.argv[-1] != "--help"
                          and program(c)[1][0].endswith(".py")}):
        out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if out.returncode:
            problems.append(f"{script} --help: exit {out.returncode}: {out.stderr.strip().splitlines()[-1:]}")
            continue
        for c in [c for c in SCRIPTS if program(c)[1][0] == script]:
            flags = {a.split("=")[0] for a in program(c)[1][1:] if a.startswith("--")}
            problems += [f"{c}: {script} has no {f}" for f in sorted(flags) if f not in out.stdout]
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------- run for real


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A folder to run the docs' commands in, with ../shared (the data sets) beside it as in a checkout."""
    base = tmp_path_factory.mktemp("docs-run")
    work = base / "repo"
    work.mkdir()
    shared = ROOT.parent / "shared"
    if shared.exists():
        (base / "shared").symlink_to(shared)
    return work


CHEAP = [c for c in EMMR if not c.snapshot and not c.inline
         and (program(c)[1][:1] == ["synth"] or program(c)[1][:2] == ["convert", "mosi-utterance-csv"])
         and not any(PLACEHOLDER.match(a) and a != "..." for a in program(c)[1])
         and not os.path.isabs(program(c)[1][program(c)[1].index("--out") + 1])]  # only where the scratch folder holds it


@pytest.mark.parametrize("command", CHEAP, ids=str)
def test_the_cheap_emmr_commands_of_the_docs_run_as_written(command, scratch):
    args = program(command)[1]
    if "convert" in args and not (scratch.parent / "shared" / "datasets" / "cmu-mosi-utterance").exists():
        pytest.skip("../shared/datasets/cmu-mosi-utterance is not here")
    out = subprocess.run([sys.executable, "-m", "emmr.cli", *args], cwd=scratch, capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, f"{command}\n{out.stderr[-2000:]}"
    written = args[args.index("--out") + 1]
    assert list((scratch / written).rglob("*.parquet")), f"{command}: wrote no Parquet under {written}"


def test_help_commands_of_the_readme_run():
    for argv in (["make", "help"], [str(Path(sys.executable).parent / "emmr-score"), "--help"]):
        if not Path(argv[0]).exists() and not shutil.which(argv[0]):
            argv = [sys.executable, "-m", "beam_pipeline.run", "--help"]
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip(), argv


@pytest.mark.slow  # about a minute on two cores: the README's first command, end to end
def test_make_demo_runs(tmp_path):
    venv = Path(sys.executable).parent.parent
    if not (venv / ".installed").exists():
        pytest.skip(f"{venv} is not a `make venv` environment")
    out = subprocess.run(["make", "demo", f"VENV={venv}", f"DEMO_DIR={tmp_path / 'demo'}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"records in \d+ = \d+ predictions \+ \d+ dead letters \(conserved\)", out.stdout)
    assert "== done in" in out.stdout
