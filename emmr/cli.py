"""`emmr`: the command line. Each subcommand lives in its own module of emmr/commands/."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> module under emmr.commands exposing `add_arguments(parser)` and `run(args) -> int`, plus a docstring.
COMMANDS = ("synth", "train", "evaluate", "compare", "convert", "publish")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emmr", description="EMMR sentiment model: data, training, evaluation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"emmr.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"emmr.commands.{name}":
                continue  # not built yet
            raise
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        logging.getLogger("emmr").error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
