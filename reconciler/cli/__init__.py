"""The command line: thin. Each command builds an Engine, calls it, and renders what it returns.

Library errors become one-line messages and exit 1 only here, never tracebacks (`common.friendly`).
This module is all that `reconcile --help` and `--version` import: the commands live in modules by
theme and are imported only when they run, so a command's name, module and one-line summary are
written once more in `COMMANDS` below (a test checks that they match).

- `review`: validate, plan, show, status: nothing is paid, the state is only read;
- `run`: apply and watch, which pay; sim, the simulator they can run against;
- `team`: lock merge, adopt, resolve: repairs after teammates' work, without paying;
- `maintenance`: init, verify, gc, gallery, takes, cost;
- `common`: the error boundary, the asset repo and the options `plan` and `apply` share.
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import __version__
from .group import Entry, LazyGroup

COMMANDS = {
    "adopt": Entry(".team", "adopt", "Take existing videos (OUTPUTDIR/NAME.<hash>.mp4) as their "
                   "specs' current takes, when the lock and the state know nothing of them (a lost "
                   "lock). Your word that they match the specs."),
    "apply": Entry(".run", "apply", "Converge: submit, poll, download and materialize until the "
                   "videos match the specs."),
    "cost": Entry(".maintenance", "cost", "What POSTs that may be billed cost, from the ledger "
                  "(failed and filtered operations are not billed by the provider: this is an "
                  "upper bound)."),
    "gallery": Entry(".maintenance", "gallery", "Write a static review page: one card per spec, "
                     "with its video, a poster frame, its prompt, model, cost and state (and why, "
                     "for a spec without a video)."),
    "gc": Entry(".maintenance", "gc", "Delete cached videos that no current spec, output or lock "
                "entry needs."),
    "init": Entry(".maintenance", "init", "Start an asset repo here: an example spec, "
                  "reconcile.yaml, Git LFS and lock-merge attributes, state/ ignored, a CI "
                  "workflow. Existing files are left alone."),
    "lock": Entry(".team", "lock", "Repair reconcile.lock without paying."),
    "plan": Entry(".review", "plan", "Show what apply would do and what it would cost. Never "
                  "calls the API."),
    "resolve": Entry(".team", "resolve", "Settle a spec whose submission is unknown (--operation) "
                     "or stuck elsewhere (--abandoned)."),
    "show": Entry(".review", "show", "Print a plan saved by `reconcile plan --out FILE`."),
    "sim": Entry(".run", "sim", "Serve the Veo API simulator on loopback, for your own tests."),
    "status": Entry(".review", "status", "One row per spec: name, state, path, sha256, error."),
    "takes": Entry(".maintenance", "takes", "Every video NAME ever had: when, prompt, cost, "
                   "whether its bytes are still cached. Pin one with `take: <sha256 prefix>` in "
                   "the spec to show it again, for free."),
    "validate": Entry(".review", "validate", "Load and check every spec; nothing else (the state "
                      "is not even opened)."),
    "verify": Entry(".maintenance", "verify", "Re-hash every output and check its duration and "
                    "resolution against its spec."),
    "watch": Entry(".run", "watch", "Run as a daemon: reconcile whenever specs change, and every "
                   "--resync seconds."),
}  # fmt: skip


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="The asset repo (holds specs/ and reconcile.yaml).",
)
@click.version_option(__version__, prog_name="reconcile")
@click.pass_context
def main(ctx: click.Context, repo: Path) -> None:
    """Make a repo's videos match its YAML specs, paying for each video once."""
    ctx.obj = repo
