"""The ``nls`` commands, one module per command or group of commands; :mod:`pipeline.cli` parses the
command line and dispatches to their ``cmd_*`` functions. Heavy modules load inside the commands only."""
