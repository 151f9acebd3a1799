"""`reconcile init`: the files a new asset repo starts with, and nothing it already has.

A team's first hour decides whether the tool's promises hold: state/ never committed, videos in
Git LFS, two branches' locks merged by the tool instead of deleted, CI that plans on pull requests
and applies on main without `|| true`. These files make that the default; existing files are never
overwritten.
"""

from __future__ import annotations

from pathlib import Path

EXAMPLE_SPEC = """\
# One video per document: `reconcile plan` shows what it costs, `reconcile apply` makes it.
# Keys are the API's own parameter names; see the README for every field.
name: example
model: veo-3.1-fast-generate-001
prompt: >
  A paper boat drifts down a rain-soaked street at dusk, neon reflections in the puddles.
  Audio: rain on the pavement and a distant tram bell.
aspectRatio: "16:9"
resolution: 720p
durationSeconds: 8
"""

CONFIG = """\
# reconcile.yaml: every key is optional.
outputDir: videos
defaults:
  enhancePrompt: true
limits:
  concurrency: 4
budget:                  # USD, counted from the POSTs actually sent
  perDay: 20
# models:                # ids your provider serves beyond the built-in catalog
#   my-proxy-model:
#     price: {720p: 0.20}
#     resolutions: [720p]
#     features: [image]
# state: postgresql://host/db    # share generations across a team (or RECONCILE_STATE)
# objects: s3://bucket/prefix    # share videos across a team (or RECONCILE_OBJECTS)
"""

GITATTRIBUTES = """\
# Videos go to Git LFS (run `git lfs install` once per machine).
videos/** filter=lfs diff=lfs merge=lfs -text
# Two branches' locks are merged by reconciler, never left with conflict markers:
#   git config merge.reconcile-lock.driver "reconcile lock merge --driver %O %A %B"
reconcile.lock merge=reconcile-lock
"""

STATE_IGNORE = "# reconciler's local state (db, cache, the --sim sandbox): never commit it\n*\n"

WORKFLOW = """\
# Plan on pull requests (as a comment-ready summary), apply on main.
name: videos
on:
  push: {branches: [main]}
  pull_request:
jobs:
  videos:
    runs-on: ubuntu-latest
    concurrency: videos-${{ github.ref }}
    steps:
      - uses: actions/checkout@v4
        with: {lfs: true}
      - uses: actions/setup-python@v5
        with: {python-version: "3.12"}
      - uses: actions/cache@v4
        with: {path: state, key: "reconcile-${{ github.ref }}-${{ github.run_id }}", restore-keys: "reconcile-${{ github.ref }}-"}
      - run: pip install reconciler
      - name: plan
        if: github.event_name == 'pull_request'
        run: reconcile plan --format markdown >> "$GITHUB_STEP_SUMMARY"
      - name: apply
        if: github.event_name == 'push'
        env:
          GPTPROTO_API_KEY: ${{ secrets.GPTPROTO_API_KEY }}
        run: |
          reconcile apply --yes --max-cost 20
          git config user.name "reconcile"; git config user.email "reconcile@users.noreply.github.com"
          git config merge.reconcile-lock.driver "reconcile lock merge --driver %O %A %B"
          git add videos reconcile.lock
          git diff --cached --quiet || git commit -m "reconcile: materialize videos"
          for attempt in 1 2 3 4 5; do
            git push && exit 0
            git pull --rebase
            reconcile apply --yes --max-cost 20
            git add videos reconcile.lock
            git diff --cached --quiet || git commit -m "reconcile: materialize videos"
          done
          echo "could not push after 5 attempts; the videos stay in the cached state/" >&2
          exit 1
"""

FILES = {
    "specs/example.yaml": EXAMPLE_SPEC,
    "reconcile.yaml": CONFIG,
    ".gitattributes": GITATTRIBUTES,
    "state/.gitignore": STATE_IGNORE,
    "assets/.gitkeep": "",
    ".github/workflows/videos.yml": WORKFLOW,
}


def init(repo: Path) -> list[tuple[str, bool]]:
    """Write the starter files that are missing; returns (path, written) for each, in order."""
    done = []
    for rel, text in FILES.items():
        target = repo / rel
        if target.exists():
            done.append((rel, False))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        done.append((rel, True))
    return done
