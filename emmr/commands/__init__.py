"""One module per `emmr` subcommand: `add_arguments(parser)` and `run(args) -> int`."""
