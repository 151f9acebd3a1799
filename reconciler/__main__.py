"""`python -m reconciler` (and the `reconcile` script) runs the CLI.

A plain `plan` or `status` whose last answer still holds is answered from the memo before click
or any command is imported (see ``memo``): that import is most of what such a run costs.
"""

import os
import sys

from .memo import replay_argv


def run() -> None:
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:  # started with it closed (`>&-`): what it says goes nowhere
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - for the process's life
    replay_argv(sys.argv[1:])
    from .cli import main

    try:
        main()
        code: str | int | None = 0
    except SystemExit as exc:
        code = exc.code
    common = sys.modules.get(f"{__package__}.cli.common")  # imported once a command ran
    try:
        sys.stdout.flush()
    except BrokenPipeError:  # what was left to write when the reader (`| head`) had gone
        if common is not None and common.reader_left():
            code = common.QUIET_EPIPE
    if common is not None and common.leaving_quickly and not isinstance(code, str):
        leave(code or 0)
    sys.exit(code)


def leave(code: int) -> None:
    """Exit without the interpreter's teardown, after what of it matters here.

    Freeing what a load of 10,000 specs allocated took 15-30 ms at exit: 5-8% of a cold `plan`.
    A command that only reads (``common.leave_quickly``) has nothing left for the teardown to
    finish but its output and the exit handlers, so they are done here; with another thread
    still running (one that a normal exit would wait for), output that cannot be flushed (a
    closed pipe), or a profiler or tracer watching (``python -m cProfile -m reconciler plan``
    prints its figures once ``run`` returns), the exit is the normal one.
    """
    import atexit
    import threading

    if watched():
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    if threading.active_count() > 1:
        return
    atexit._run_exitfuncs()
    os._exit(code)


def watched() -> bool:
    """Whether a profiler, a tracer or a debugger is attached (3.12's cProfile and coverage use
    sys.monitoring rather than a profile or trace function), or `python -i` waits to inspect."""
    if sys.getprofile() is not None or sys.gettrace() is not None or sys.flags.inspect:
        return True
    monitoring = getattr(sys, "monitoring", None)
    return monitoring is not None and any(monitoring.get_tool(i) is not None for i in range(6))


if __name__ == "__main__":
    run()
