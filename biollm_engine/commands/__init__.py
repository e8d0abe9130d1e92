"""One module per `biollm` subcommand: `add_parser(subparsers)` sets `run=` via set_defaults."""
