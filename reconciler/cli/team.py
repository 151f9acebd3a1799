"""The commands that repair what teammates' work left behind, without paying: `lock merge` (a
conflict in reconcile.lock), `adopt` (videos a lost lock forgot), `resolve` (a submission whose
outcome is unknown, or stuck on another host).
"""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import ReconcileError
from .common import asset_repo, check_names, friendly, load_valid


@click.group()
def lock() -> None:
    """Repair reconcile.lock without paying."""


@lock.command("merge")
@click.option(
    "--driver",
    nargs=3,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="BASE OURS THEIRS",
    help="Run as git's merge driver for reconcile.lock (%O %A %B): the result goes to OURS.",
)
@click.option("--sim", is_flag=True, help="Merge the sandbox's lock of --sim runs.")
@friendly
def lock_merge(driver: tuple[Path, Path, Path] | None, sim: bool) -> None:
    """Resolve a merge conflict in reconcile.lock: keep both sides' entries, and for a spec both
    changed, the take whose file is here (else the one of the spec as it is, else the newer)."""
    from ..lockfile import LOCK_FILE
    from ..repairs import merge_lock
    from ..workspace import Workspace

    ws = Workspace(asset_repo(), sandbox=sim, read_only=True)
    try:
        specs = ws.load().specs  # keys of the specs that parse; a broken spec must not block this
        if driver:
            notes = merge_lock(ws, specs, ours=driver[1], theirs=driver[2])
        else:
            notes = merge_lock(ws, specs)
    finally:
        ws.close()
    for note in notes:
        click.echo(note)
    click.echo(f"{LOCK_FILE} merged; `reconcile plan` shows what it means.")


@click.command()
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option("--sim", is_flag=True, help="Adopt in the sandbox of --sim runs.")
@friendly
def adopt(names: tuple[str, ...], sim: bool) -> None:
    """Take existing videos (OUTPUTDIR/NAME.<hash>.mp4) as their specs' current takes, when the
    lock and the state know nothing of them (a lost lock). Your word that they match the specs."""
    from ..repairs import adopt as adopt_videos
    from ..workspace import Workspace

    ws = Workspace(asset_repo(), sandbox=sim)
    try:
        specs = load_valid(ws)
        check_names(specs, names, "adopt")
        said = adopt_videos(ws, specs, set(names) if names else None)
        ws.write_lock()
    finally:
        ws.close()
    for line in said:
        click.echo(line)


@click.command()
@click.argument("name")
@click.option("--operation", help="The operation name the provider gave for it.")
@click.option(
    "--abandoned",
    is_flag=True,
    help="The process submitting it is gone (another host, a wedged run): record it as unknown.",
)
@click.option("--sim", is_flag=True, help="Resolve in the sandbox of --sim runs.")
@click.option("--force", is_flag=True, help="Replace an operation already recorded for it.")
@friendly
def resolve(name: str, operation: str | None, abandoned: bool, sim: bool, force: bool) -> None:
    """Settle a spec whose submission is unknown (--operation) or stuck elsewhere (--abandoned)."""
    from ..workspace import Workspace

    if (operation is None) == (not abandoned):
        raise ReconcileError("give --operation OP (the job was found) or --abandoned, not both")
    if operation is not None and "operations/" not in operation:
        raise ReconcileError(
            f"--operation {operation!r} is not an operation name "
            "(models/MODEL/operations/ID or operations/ID)"
        )
    ws = Workspace(asset_repo(), sandbox=sim)
    try:
        specs = {s.name: s for s in load_valid(ws)}
        if name not in specs:
            raise ReconcileError(f"no spec named {name!r}")
        if operation is None:
            ws.abandon(specs[name])
        else:
            ws.resolve(specs[name], operation, force=force)
    finally:
        ws.close()
    if operation is None:
        click.echo(f"{name}: recorded as unknown; `reconcile resolve {name} --operation OP` "
                   "adopts its job if found, `apply --resubmit-unknown` pays for a new one.")  # fmt: skip
    else:
        click.echo(
            f"{name}: adopted {operation}; `reconcile apply` polls it instead of submitting."
        )
