"""The commands that look after a repo's videos and records: `verify`, `gc`, `gallery`, `takes`,
`cost`, and `init` to start a repo.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ReconcileError
from .common import asset_repo, friendly, given_repo, load_valid


@click.command()
@friendly
def init() -> None:
    """Start an asset repo here: an example spec, reconcile.yaml, Git LFS and lock-merge
    attributes, state/ ignored, a CI workflow. Existing files are left alone."""
    repo = given_repo()
    repo.mkdir(parents=True, exist_ok=True)
    from ..scaffold import init as scaffold

    for rel, written in scaffold(repo):
        click.echo(f"{'created' if written else 'kept   '} {rel}")
    click.echo(
        "Next: `git lfs install`, then `git config merge.reconcile-lock.driver "
        '"reconcile lock merge --driver %O %A %B"`, then `reconcile plan`.'
    )


@click.command()
@click.option("--sim", is_flag=True, help="Verify the sandbox of --sim runs.")
@friendly
def verify(sim: bool) -> None:
    """Re-hash every output and check its duration and resolution against its spec."""
    from ..audit import verify as verify_outputs
    from ..workspace import Workspace

    ws = Workspace(asset_repo(), sandbox=sim, read_only=True)
    try:
        findings = verify_outputs(ws, load_valid(ws))
    finally:
        ws.close()
    for f in findings:
        click.echo(f"{'ok ' if f.ok else 'BAD'} {f.name}: {f.path or '-'}"
                   + ("" if f.ok else f" ({'; '.join(f.problems)})"))  # fmt: skip
    bad = [f for f in findings if not f.ok]
    click.echo(f"{len(findings) - len(bad)} of {len(findings)} outputs verified.")
    if bad:
        raise ReconcileError(
            f"{len(bad)} output(s) do not match their specs; `reconcile apply` repairs them"
        )


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@click.option(
    "--remote",
    is_flag=True,
    help="Also delete objects of the shared store (objects: s3://…) that nothing in THIS tree "
    "needs. Other clones, branches and CI runners cannot be seen from here: what only they "
    "need is deleted too. Without it the shared store is never touched.",
)
@click.option("--sim", is_flag=True, help="Collect in the sandbox of --sim runs.")
@friendly
def gc(dry_run: bool, remote: bool, sim: bool) -> None:
    """Delete cached videos that no current spec, output or lock entry needs."""
    from ..audit import collect, collect_shared, delete, delete_shared, needed
    from ..takes import owners
    from ..workspace import Workspace

    ws = Workspace(asset_repo(), sandbox=sim, read_only=True)
    try:
        if remote and ws.cache.remote is None:
            raise ReconcileError("--remote: no shared object store is configured (objects: "
                                 "s3://… in reconcile.yaml, or RECONCILE_OBJECTS)")  # fmt: skip
        keep = needed(ws, load_valid(ws))  # read once, for the local cache and the bucket
        garbage = collect(ws, keep)
        shared = collect_shared(ws, keep) if remote else []
        known = owners(ws.gens.attempts())
        verb = "would delete" if dry_run else "deleted"
        for item in garbage:
            name, at = known.get(item.sha256, ("?", "?"))
            take = f"{name}'s take of {at}" if name != "?" else "no known take"
            click.echo(f"{verb} {item.sha256[:16]} ({item.size:,} bytes): {take}")
        if not dry_run:
            delete(ws, garbage)
        for item in shared:
            click.echo(f"{verb} {item.where} ({item.size:,} bytes)")
            if not dry_run:
                delete_shared(ws, [item])
    finally:
        ws.close()
    verb = "would free" if dry_run else "freed"
    total = sum(g.size for g in garbage)
    click.echo(f"{len(garbage)} cached object(s), {verb} {total:,} bytes.")
    if remote:
        total = sum(g.size for g in shared)
        click.echo(f"{len(shared)} shared object(s), {verb} {total:,} bytes.")


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for index.html and its posters [default: state/gallery, with --sim "
    "state/sim/gallery].",
)
@click.option(
    "--copy-videos",
    is_flag=True,
    help="Copy the videos into the folder too, so it stands alone (a CI artifact).",
)
@click.option("--sim", is_flag=True, help="Show the sandbox of --sim runs.")
@friendly
def gallery(out: Path | None, copy_videos: bool, sim: bool) -> None:
    """Write a static review page: one card per spec, with its video, a poster frame, its prompt,
    model, cost and state (and why, for a spec without a video)."""
    from ..gallery import build
    from ..workspace import Workspace

    ws = Workspace(asset_repo(), sandbox=sim, read_only=True)
    try:
        result = ws.load()
        page = build(ws, result.specs, out=out, copy_videos=copy_videos,
                     invalid_files=bool(result.problems))  # fmt: skip
    finally:
        ws.close()
    for problem in result.problems:
        click.echo(f"warning: {problem}", err=True)
    playable = sum(1 for c in page.cards if c.video)
    posters = sum(1 for c in page.cards if c.poster)
    click.echo(f"Gallery: {len(page.cards)} cards, {playable} with a video "
               f"(posters: {page.decoded} decoded, {posters - page.decoded} reused).")  # fmt: skip
    click.echo(f"Open {page.index.as_uri()}")


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the takes as JSON.")
@click.option("--sim", is_flag=True, help="The sandbox of --sim runs.")
@friendly
def takes(name: str, as_json: bool, sim: bool) -> None:
    """Every video NAME ever had: when, prompt, cost, whether its bytes are still cached. Pin one
    with `take: <sha256 prefix>` in the spec to show it again, for free."""
    from .. import takes as takes_module
    from ..money import money
    from ..workspace import Workspace

    ws = Workspace(asset_repo(), sandbox=sim, read_only=True)
    try:
        out = ws.tree.output(name)
        found = takes_module.of(
            name, ws.gens.attempts(), ws.gens.generations(), cached=ws.cache.has,
            current=out.sha256 if out else None,
        )  # fmt: skip
    finally:
        ws.close()
    if as_json:
        click.echo(json.dumps([t.__dict__ for t in found], indent=2))
        return
    if not found:
        raise ReconcileError(f"{name} has no takes recorded here")
    for t in found:
        mark = "*" if t.current else " "
        where = "cached" if t.cached else "gone"
        prompt = (t.prompt or "")[:60]
        click.echo(f"{mark} {t.sha256[:16]}  {t.at}  {money(t.cost):>8}  {where:<6}  {prompt}")
    click.echo('(* the file in place now; `take: "<first 8+ hex>"` in the spec pins one)')


@click.command()
@click.option(
    "--by",
    type=click.Choice(["day", "month", "spec", "model"]),
    default="day",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print the lines as JSON.")
@click.option("--sim", is_flag=True, help="The sandbox of --sim runs.")
@friendly
def cost(by: str, as_json: bool, sim: bool) -> None:
    """What POSTs that may be billed cost, from the ledger (failed and filtered operations are
    not billed by the provider: this is an upper bound)."""
    from ..costs import report as cost_report
    from ..money import money
    from ..workspace import Workspace

    ws = Workspace(asset_repo(), sandbox=sim, read_only=True)
    try:
        lines = cost_report(ws.gens.attempts(), ws.gens.generations(), by)
    finally:
        ws.close()
    if as_json:
        click.echo(json.dumps([line.__dict__ for line in lines], indent=2))
        return
    for line in lines:
        click.echo(f"{line.group:<40} {money(line.usd):>10}  {line.posts} POST(s)")
    click.echo(f"{'total':<40} {money(sum(line.usd for line in lines)):>10}")
