"""The exit codes the command and its console script share (shells read them).

This module imports nothing: the console script uses it before any dependency is loaded.
"""

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
