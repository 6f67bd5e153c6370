"""One module per ``navigator`` subcommand: ``add_arguments(parser)`` and ``run(args) -> int``."""
