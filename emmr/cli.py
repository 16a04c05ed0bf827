"""`emmr`: the command line. Each subcommand lives in its own module of emmr/commands/.

Errors the user can fix (a missing or corrupt checkpoint, bad data, a bad flag value, a file that cannot be
written) end as one line naming what is wrong and exit status 2; a traceback is printed only for bugs (and for
every error with -v). Ctrl-C stops a command with exit status 130 and no traceback.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import logging
import sys

# name -> module under emmr.commands exposing `add_arguments(parser)` and `run(args) -> int`, plus a docstring.
COMMANDS = ("synth", "oracle", "train", "evaluate", "compare", "convert", "publish")
log = logging.getLogger("emmr")


PACKAGES = ("emmr", "schemas", "beam_pipeline")


def is_user_error(e: BaseException) -> bool:
    """Whether `e` means "the input or the arguments are wrong" (one line, exit 2), not "the code is wrong".

    The project's own errors (CheckpointError, DeviceError, and the ValueErrors RecordValidationError, ConvertError,
    OptionsError, MessageError), files that are missing, unreadable or cannot be written (OSError), data files
    pyarrow cannot read, YAML that does not parse, and any ValueError the project's code raises itself (its checks
    of arguments and data). A ValueError from inside a library (numpy's shapes, say) is a bug: traceback."""
    own = [OSError]
    for module, name in (("emmr.checkpoint", "CheckpointError"), ("emmr.scorer", "DeviceError"),
                         ("schemas.validate", "RecordValidationError"), ("emmr.convert", "ConvertError"),
                         ("schemas.message", "MessageError"), ("yaml", "YAMLError"), ("pyarrow", "ArrowException")):
        if module in sys.modules:  # not imported: cannot have been raised
            own.append(getattr(sys.modules[module], name))
    if isinstance(e, tuple(own)):
        return True
    return isinstance(e, ValueError) and _raised_in_project(e)


def _raised_in_project(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    module = tb.tb_frame.f_globals.get("__name__", "")
    return module.split(".")[0] in PACKAGES


def summary(doc: str | None) -> str | None:
    """The first sentence of a module docstring (its first paragraph may wrap over several lines)."""
    paragraph = " ".join((doc or "").strip().split("\n\n")[0].split())
    if not paragraph:
        return None
    end = paragraph.find(". ")
    return paragraph if end < 0 else paragraph[: end + 1]


class Parser(argparse.ArgumentParser):
    """argparse, with a suggestion for every unknown flag ("--epoch" -> did you mean --epochs?)."""

    def parse_args(self, args=None, namespace=None):
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            parser, known = self._chosen(parsed)
            parser.error(unknown_arguments_message(extras, known))
        return parsed

    def _parse_known_args(self, arg_strings, *rest):
        self._arg_strings = list(arg_strings)  # for error(): a misspelled required flag is named as such
        return super()._parse_known_args(arg_strings, *rest)

    def error(self, message: str):
        if message.startswith("the following arguments are required"):
            known = [s for a in self._actions for s in a.option_strings]
            unknown = [a for a in getattr(self, "_arg_strings", []) if a.startswith("--")
                       and not any(k.startswith(a.split("=", 1)[0]) for k in known)]
            if unknown:
                message += "; " + unknown_arguments_message(unknown, known)
        super().error(message)

    def _chosen(self, parsed: argparse.Namespace) -> tuple[argparse.ArgumentParser, list[str]]:
        """The innermost (sub)command parser that `parsed` went through, and the flags known on the way."""
        flags: list[str] = []
        parser: argparse.ArgumentParser = self
        while True:
            flags += [s for a in parser._actions for s in a.option_strings]
            chosen = [a.choices.get(getattr(parsed, a.dest, None) or "") for a in parser._actions
                      if isinstance(a, argparse._SubParsersAction)]
            if not chosen or chosen[0] is None:
                return parser, flags
            parser = chosen[0]


def unknown_arguments_message(extras: list[str], known: list[str]) -> str:
    return "; ".join(unknown_argument_problems(extras, known))


def unknown_argument_problems(extras: list[str], known: list[str]) -> list[str]:
    """"unknown flag --pateince (did you mean --patience?)" for each unknown flag; the words right after one are
    taken as its value; other stray words are named as unexpected (also used by `emmr-score`)."""
    problems, after_flag = [], False
    for arg in extras:
        if arg.startswith("-") and arg != "-":
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
            problems.append(f"unknown flag {flag}" + (f" (did you mean {close[0]}?)" if close else ""))
            after_flag = "=" not in arg
        elif not after_flag:
            hint = " (a glob the shell expanded? quote it)" if arg.endswith(".parquet") else ""
            problems.append(f"unexpected argument {arg!r}{hint}")
        else:
            after_flag = False
    return problems


def build_parser(only: tuple[str, ...] | None = None) -> argparse.ArgumentParser:
    """The `emmr` parser. With `only`, only those subcommands get their arguments (the others are listed by name
    and summary), so that the arguments of a command that trains (their defaults import torch) cost the others
    nothing."""
    parser = Parser(prog="emmr", description="EMMR sentiment model: data, training, evaluation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and a traceback with every error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"emmr.commands.{name}")
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=summary(doc), description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        if only is None or name in only:
            module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser((command,) if command in COMMANDS else ()).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        log.error("%s: interrupted", args.command)
        return 130
    except Exception as e:
        if not is_user_error(e):
            raise  # a bug: the traceback is what its report needs
        log.debug("the error's traceback", exc_info=True)
        log.error("%s: %s", args.command, " ".join(str(e).split()))  # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
