"""`python -m reconciler` (and the `reconcile` script) runs the CLI.

A plain `plan` or `status` whose last answer still holds is answered from the memo before click
or any command is imported (see ``memo``): that import is most of what such a run costs.
"""

import sys

from .memo import replay_argv


def run() -> None:
    replay_argv(sys.argv[1:])
    from .cli import main

    main()


if __name__ == "__main__":
    run()
