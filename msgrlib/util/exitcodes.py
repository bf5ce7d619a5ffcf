"""The exit codes of ``msgr``, the same for every subcommand (README, "Exit codes")."""

from __future__ import annotations

#: Success: everything was done (line mode: every message confirmed).
EXIT_OK = 0
#: An error; one line on stderr says what to do.
EXIT_ERROR = 1
#: Bad usage: an option or its value is wrong (argparse's own code too).
EXIT_USAGE = 2
#: Some messages were not delivered; stderr names them.
EXIT_UNDELIVERED = 3
#: Interrupted (Ctrl-C, SIGTERM): 128 + SIGINT, as shells report it.
EXIT_INTERRUPTED = 130
