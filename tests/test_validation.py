"""Every validation rule and every bad input, through validate, plan and apply.

One corpus of cases, each a small asset repo with one mistake in it, beside a valid spec that would
be paid for if validation let anything through. Every case must end the same way in every command:
exit 1, one clear message naming the file, the line (where YAML gives one) and the field, no
traceback, no POST, and no state written. The CLI runs in-process (click's CliRunner) for speed; a
few cases also run as real subprocesses to prove the real process prints no traceback either.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import API_KEY, Repo, jpeg_bytes, png_bytes

from reconciler.cli import main
from reconciler.sim import Simulator

MODEL = "veo-3.1-fast-generate-preview"
# Lines 1-3 of most bad specs; a case's own mistake starts on line 4.
HEAD = f"name: a\nmodel: {MODEL}\nprompt: A red kite over a windy beach.\n"
# A valid spec beside every bad one: validation must stop it from being paid for too.
NEIGHBOUR = f"name: ok\nmodel: {MODEL}\nprompt: Waves roll onto the sand at dusk.\n"
VIDEO_URI = "https://api.gptproto.com/v1beta/files/src123:download?alt=media"
COMMANDS = {
    "validate": ["validate"],
    "plan": ["plan"],
    "apply": ["apply", "--yes", "--poll-interval", "0.05"],
}
Setup = Callable[[Path], None]


@dataclass(frozen=True)
class Case:
    """One bad repo and the one message it must produce."""

    id: str
    files: dict[str, str | bytes]
    file: str  # the file the message names first
    line: int | None  # None where YAML gives no line (an empty or undecodable file)
    field: str | None  # None for whole-document problems
    wording: tuple[str, ...]  # phrases the message must contain
    setup: Setup | None = None  # what plain files cannot express: symlinks, sparse files, outside

    def build(self, root: Path) -> None:
        write(root, self.files)
        if self.setup is not None:
            self.setup(root)

    @property
    def prefix(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: " + (f"{self.field}: " if self.field else "")


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")


def spec(
    extra: str = "", head: str = HEAD, files: dict[str, str | bytes] | None = None
) -> dict[str, str | bytes]:
    """specs/a.yaml = head + extra, beside the valid neighbour and any other files."""
    return {"specs/a.yaml": head + extra, "specs/ok.yaml": NEIGHBOUR, **(files or {})}


def bad(
    id: str,
    files: dict[str, str | bytes],
    line: int | None,
    field: str | None,
    *wording: str,
    file: str = "specs/a.yaml",
    setup: Setup | None = None,
) -> Case:
    return Case(id, files, file, line, field, wording, setup)


def config(text: str) -> dict[str, str | bytes]:
    return {"reconcile.yaml": text, "specs/ok.yaml": NEIGHBOUR}


def _sparse_png(root: Path) -> None:
    """A PNG header followed by a hole: 21 MiB on paper, nothing on disk."""
    path = root / "assets" / "huge.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(png_bytes()[:8])
        fh.truncate(21 * 1024 * 1024)


def _outside_png(root: Path) -> None:
    (root.parent / "outside.png").write_bytes(png_bytes(3))


def _symlink_out(root: Path) -> None:
    _outside_png(root)
    (root / "assets").mkdir(exist_ok=True)
    (root / "assets" / "link.png").symlink_to(root.parent / "outside.png")


def _symlink_loop(root: Path) -> None:
    (root / "assets").mkdir(exist_ok=True)
    (root / "assets" / "loop.png").symlink_to(root / "assets" / "loop.png")


def _noslug(name: str) -> str:
    return f"name: {name}\nmodel: {MODEL}\nprompt: A red kite over a windy beach.\n"


LONG_NAME = "a" * 65
NOT_MODEL = "name: a\nprompt: A red kite over a windy beach.\n"

CASES = [
    # -- YAML itself --------------------------------------------------------------------------
    bad("yaml-colon-in-plain-value",
        spec(head="name: a\nmodel: veo-3.1-fast-generate-preview\nprompt: Shot: a kite\n"),
        3, None, "invalid YAML", "mapping values are not allowed", "quote"),
    bad("yaml-unclosed-quote",
        spec(head=f'name: a\nprompt: "A kite over a beach\nmodel: {MODEL}\n'),
        2, None, "invalid YAML", "quoted scalar that starts on line 2"),
    bad("yaml-tab-indent", spec(head=f"name: a\nmodel: {MODEL}\n\tprompt: x\n"),
        3, None, "invalid YAML", "tab", "spaces"),
    bad("yaml-duplicate-key", spec("prompt: A blue kite.\n"),
        4, "prompt", "duplicate key (first written on line 3)"),
    bad("yaml-python-tag", spec(head=f"name: a\nmodel: {MODEL}\nprompt: !!python/object/apply:os.system ['id']\n"),
        3, None, "invalid YAML", "could not determine a constructor"),
    bad("yaml-control-character", spec(head=f"name: a\nmodel: {MODEL}\nprompt: a\x01b\n"),
        3, None, "invalid YAML", "#x0001 is not allowed"),
    bad("yaml-nested-too-deep", spec("negativePrompt: " + "[" * 2000 + "]" * 2000 + "\n"), 4,
        None, "invalid YAML", "maximum nesting depth"),
    bad("doc-is-a-list", spec(head="- name: a\n- name: b\n"),
        1, None, "a spec must be a mapping of keys", "not a list"),
    bad("doc-is-a-scalar", spec(head="just a prompt, no keys\n"),
        1, None, "a spec must be a mapping of keys", "not the text 'just a prompt, no keys'"),
    bad("doc-second-of-three-bad",
        spec("---\nname: b\nmodel: veo-3.1-fast-generate-preview\nprompt: x\nfps: 24\n---\n"
             "name: c\nmodel: veo-3.1-fast-generate-preview\nprompt: y\n"),
        8, "fps", "unknown key; allowed keys: name, model, prompt"),
    bad("file-not-utf8", {"specs/a.yaml": "name: a\nprompt: caf\xe9\n".encode("latin-1"),
                          "specs/ok.yaml": NEIGHBOUR},
        2, None, "is not UTF-8 text (byte 0xe9"),
    bad("file-empty", {"specs/a.yaml": "", "specs/ok.yaml": NEIGHBOUR},
        None, None, "holds no spec", "empty"),
    bad("file-only-comments", {"specs/a.yaml": "# todo: write this one\n", "specs/ok.yaml": NEIGHBOUR},
        None, None, "holds no spec"),
    # -- keys ---------------------------------------------------------------------------------
    bad("unknown-key", spec("sampleCount: 2\n"), 4, "sampleCount",
        "unknown key; allowed keys: name, model, prompt, aspectRatio"),
    bad("misspelt-resoluton", spec("resoluton: 1080p\n"), 4, "resoluton",
        "unknown key; did you mean 'resolution'?"),
    bad("misspelt-aspect_ratio", spec('aspect_ratio: "16:9"\n'), 4, "aspect_ratio",
        "unknown key; did you mean 'aspectRatio'?"),
    bad("misspelt-promt", spec(head=f"name: a\nmodel: {MODEL}\npromt: A kite.\n"), 3, "promt",
        "unknown key; did you mean 'prompt'?"),
    # -- types --------------------------------------------------------------------------------
    bad("prompt-number", spec(head=f"name: a\nmodel: {MODEL}\nprompt: 123\n"), 3, "prompt",
        "must be text, not 123"),
    bad("prompt-list", spec(head=f"name: a\nmodel: {MODEL}\nprompt: [a, b]\n"), 3, "prompt",
        "must be text, not a list"),
    bad("enhancePrompt-maybe", spec('enhancePrompt: "maybe"\n'), 4, "enhancePrompt",
        "must be true or false, not 'maybe'"),
    bad("durationSeconds-eight", spec('durationSeconds: "eight"\n'), 4, "durationSeconds",
        "'eight' is not allowed; use one of 4, 6 or 8"),
    bad("durationSeconds-5", spec("durationSeconds: 5\n"), 4, "durationSeconds",
        "5 is not allowed; use one of 4, 6 or 8"),
    bad("durationSeconds-true", spec("durationSeconds: true\n"), 4, "durationSeconds",
        "true is not allowed; use one of 4, 6 or 8"),
    bad("durationSeconds-8.5", spec("durationSeconds: 8.5\n"), 4, "durationSeconds",
        "8.5 is not allowed"),
    bad("image-number", spec("image: 5\n"), 4, "image", "must be text, not 5"),
    bad("video-not-mapping", spec(f"video: {VIDEO_URI}\n"), 4, "video",
        "must be a mapping such as {uri: https://"),
    # -- values out of range ------------------------------------------------------------------
    bad("aspectRatio-4:3", spec('aspectRatio: "4:3"\n'), 4, "aspectRatio",
        "'4:3' is not allowed; use one of '16:9' or '9:16'"),
    bad("aspectRatio-4:3-unquoted", spec("aspectRatio: 4:3\n"), 4, "aspectRatio",
        "'4:3' is not allowed; use one of '16:9' or '9:16'"),
    bad("resolution-2k", spec("resolution: 2k\n"), 4, "resolution",
        "'2k' is not allowed; use one of '720p', '1080p' or '4k'"),
    bad("personGeneration-everyone", spec("personGeneration: everyone\n"), 4, "personGeneration",
        "'everyone' is not allowed; use one of 'allow_all' or 'allow_adult'"),
    bad("model-unknown", spec(head="name: a\nmodel: veo-2\nprompt: A kite.\n"), 2, "model",
        "unknown model 'veo-2'; known: veo-3.1-fast-generate-001, veo-3.1-fast-generate-preview, "
        "veo-3.1-generate-001, veo-3.1-generate-preview, veo-3.1-lite-generate-001. Declare the id"),
    # -- rules across fields ------------------------------------------------------------------
    bad("1080p-4s", spec("resolution: 1080p\ndurationSeconds: 4\n"), 5, "durationSeconds",
        "resolution 1080p needs 8 seconds (got 4)"),
    bad("1080p-6s", spec("resolution: 1080p\ndurationSeconds: 6\n"), 5, "durationSeconds",
        "resolution 1080p needs 8 seconds (got 6)"),
    bad("4k-6s", spec("durationSeconds: 6\nresolution: 4k\n"), 4, "durationSeconds",
        "resolution 4k needs 8 seconds (got 6)"),
    # -- prompt -------------------------------------------------------------------------------
    bad("prompt-missing", spec(head=f"name: a\nmodel: {MODEL}\n"), 1, "prompt", "is required"),
    bad("prompt-empty", spec(head=f'name: a\nmodel: {MODEL}\nprompt: ""\n'), 3, "prompt",
        "must not be empty"),
    bad("prompt-whitespace", spec(head=f'name: a\nmodel: {MODEL}\nprompt: "   "\n'), 3, "prompt",
        "must not be empty"),
    bad("prompt-null", spec(head=f"name: a\nmodel: {MODEL}\nprompt:\n"), 3, "prompt",
        "is empty"),
    bad("prompt-too-long", spec(head=f"name: a\nmodel: {MODEL}\nprompt: {'x' * 5000}\n"), 3,
        "prompt", "5000 characters is longer than the API accepts"),
    bad("model-missing", spec(head=NOT_MODEL), 1, "model", "is required"),
    # -- name ---------------------------------------------------------------------------------
    bad("name-missing", spec(head=f"model: {MODEL}\nprompt: A kite.\n"), 1, "name", "is required"),
    bad("name-duplicate-across-files",
        {"specs/a.yaml": HEAD, "specs/z/b.yaml": f"# b\n{HEAD}", "specs/ok.yaml": NEIGHBOUR},
        2, "name", "duplicate name 'a': already defined in specs/a.yaml:1",
        file="specs/z/b.yaml"),
    bad("name-Hero", spec(head=_noslug("Hero")), 1, "name", "'Hero' is not a slug", "'hero'"),
    bad("name-with-space", spec(head=_noslug("my video")), 1, "name",
        "'my video' is not a slug", "'my-video'"),
    bad("name-with-slash", spec(head=_noslug("a/b")), 1, "name", "'a/b' is not a slug"),
    bad("name-dotdot", spec(head=_noslug("../escape")), 1, "name", "'../escape' is not a slug"),
    bad("name-trailing-newline", spec(head=f"name: |\n  abc\nmodel: {MODEL}\nprompt: A kite.\n"), 1,
        "name", "'abc\\n' is not a slug"),
    bad("name-leading-dash", spec(head=_noslug("-x")), 1, "name", "'-x' is not a slug"),
    bad("name-65-chars", spec(head=_noslug(LONG_NAME)), 1, "name",
        "is 65 characters long; a name has at most 64"),
    bad("name-date", spec(head=_noslug("2024-01-01")), 1, "name",
        "must be text, not the date 2024-01-01; put it in quotes"),
    bad("name-number", spec(head=_noslug("123456")), 1, "name", "must be text, not 123456"),
    # -- image --------------------------------------------------------------------------------
    bad("image-missing", spec("image: ../assets/missing.png\n"), 4, "image",
        "'../assets/missing.png' not found (looked for assets/missing.png"),
    bad("image-not-png-or-jpeg", spec("image: ../assets/fake.png\n", files={"assets/fake.png": "not a picture\n"}),
        4, "image", "'../assets/fake.png' is not a PNG or JPEG file"),
    bad("image-over-20-MiB", spec("image: ../assets/huge.png\n"), 4, "image",
        "is 21.0 MiB; the API accepts at most 20 MiB", setup=_sparse_png),
    bad("image-leaves-repo", spec("image: ../../outside.png\n"), 4, "image",
        "'../../outside.png' leaves the asset repo", setup=_outside_png),
    bad("image-symlink-out", spec("image: ../assets/link.png\n"), 4, "image",
        "leaves the asset repo through a symlink", setup=_symlink_out),
    bad("image-is-folder", spec("image: ../assets\n", files={"assets/x.png": png_bytes()}), 4, "image",
        "is a folder"),
    bad("image-symlink-loop", spec("image: ../assets/loop.png\n"), 4, "image",
        "'../assets/loop.png' is a symlink loop", setup=_symlink_loop),
    bad("image-nul-in-path", spec('image: "../assets/a\\0.png"\n'), 4, "image",
        "holds a NUL character"),
    bad("image-name-too-long", spec(f"image: ../assets/{'p' * 300}.png\n", files={"assets/x.png": png_bytes()}), 4, "image",
        "cannot be read: File name too long"),
    bad("image-empty", spec('image: ""\n'), 4, "image", "must not be empty"),
    # -- video --------------------------------------------------------------------------------
    bad("image-and-video", spec(f"image: ../assets/x.png\nvideo:\n  uri: {VIDEO_URI}\n",
                                files={"assets/x.png": png_bytes()}),
        5, "video", "'image' and 'video' cannot be used together"),
    bad("video-1080p", spec(f"resolution: 1080p\nvideo: {{uri: '{VIDEO_URI}'}}\n"), 4,
        "resolution", "video-to-video (extension) only supports 720p"),
    bad("video-6s", spec(f"durationSeconds: 6\nvideo: {{uri: '{VIDEO_URI}'}}\n"), 4,
        "durationSeconds", "video-to-video (extension) needs 8"),
    bad("video-from-unknown", spec("video: {from: intro}\n"), 1, "video.from",
        "no valid spec named 'intro' to extend"),
    bad("video-uri-not-http", spec("video: {uri: 'ftp://example.com/v.mp4'}\n"), 4, "video",
        "'uri' must be an http(s) URI"),
    bad("video-uri-and-from", spec(f"video: {{uri: '{VIDEO_URI}', from: intro}}\n"), 4, "video",
        "give exactly one of 'uri' or 'from'"),
    bad("video-unknown-key", spec(f"video:\n  url: {VIDEO_URI}\n"), 5, "video.url",
        "unknown key; did you mean 'uri'?"),
    # -- reconcile.yaml -----------------------------------------------------------------------
    bad("config-bad-yaml", config(f"outputDir: videos\ndefaults: {{model: {MODEL}\n"),
        2, None, "invalid YAML", "flow mapping that starts on line 2", file="reconcile.yaml"),
    bad("config-not-mapping", config("- videos\n"), 1, None, "must be a mapping of settings",
        file="reconcile.yaml"),
    bad("config-unknown-key", config("outputdir: clips\n"), 1, "outputdir",
        "unknown key; did you mean 'outputDir'?", file="reconcile.yaml"),
    bad("config-nested-unknown-key", config("limits:\n  concurrency: 2\n  submitPerMinut: 3\n"),
        3, "limits.submitPerMinut", "did you mean 'submitPerMinute'?", file="reconcile.yaml"),
    bad("config-outputDir-escapes", config("outputDir: ../out\n"), 1, "outputDir",
        "must be a relative folder inside the repo, without '..'", file="reconcile.yaml"),
    bad("config-defaults-typo", config("defaults: {resolutoin: 1080p}\n"), 1,
        "defaults.resolutoin", "unknown key; did you mean 'resolution'?", file="reconcile.yaml"),
    bad("config-defaults-name", config("defaults: {name: x}\n"), 1, "defaults.name",
        "'name' cannot have a default", file="reconcile.yaml"),
    bad("config-defaults-bad-value", config("defaults:\n  resolution: 2k\n"), 2,
        "defaults.resolution", "'2k' is not allowed", file="reconcile.yaml"),
    bad("config-defaults-bad-model", config("defaults:\n  model: veo-2\n"), 2,
        "defaults.model", "unknown model 'veo-2'", file="reconcile.yaml"),
    bad("config-defaults-break-rule",
        config("defaults:\n  resolution: 4k\n  durationSeconds: 6\n"), 3,
        "defaults.durationSeconds", "resolution 4k needs 8 seconds (got 6)",
        file="reconcile.yaml"),
    bad("config-defaults-not-mapping", config("defaults: [720p]\n"), 1, "defaults",
        "must be a mapping", file="reconcile.yaml"),
    bad("spec-breaks-rule-with-default",
        {"reconcile.yaml": "defaults:\n  resolution: 1080p\n", **spec("durationSeconds: 4\n")},
        4, "durationSeconds", "resolution 1080p needs 8 seconds (got 4)",
        "from reconcile.yaml defaults"),
]  # fmt: skip


def invoke(root: Path, sim: Simulator, command: str) -> Result:
    runner = CliRunner()
    env = {"RECONCILE_API_BASE": sim.base_url, "GPTPROTO_API_KEY": API_KEY}
    return runner.invoke(main, ["--repo", str(root), *COMMANDS[command]], env=env)


def problem_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if line.strip() and not line.endswith("nothing was submitted")
    ]


def assert_untouched(root: Path, sim: Simulator) -> None:
    """No POST, no generation recorded, no output, no lock: as if nothing had run."""
    assert sim.post_requests == 0 and sim.paid_posts == 0
    assert sim.requests == []  # not even a poll: invalid input stops everything before the API
    db = root / "state" / "reconciler.db"
    if db.exists():
        with closing(sqlite3.connect(db)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            for table in ("generations", "attempts", "outputs"):
                if table in tables:
                    assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    assert not (root / "videos").exists()
    assert not (root.parent / "out").exists()
    assert not (root / "reconcile.lock").exists()
    objects = root / "state" / "objects"
    assert not objects.exists() or not any(p.is_file() for p in objects.rglob("*"))


def assert_one_clear_message(case: Case, code: int, stdout: str, stderr: str) -> None:
    assert "Traceback" not in stdout + stderr, stdout + stderr
    assert code == 1, stdout + stderr
    assert stdout == "", stdout
    lines = problem_lines(stderr)
    assert len(lines) == 1, stderr
    message = lines[0].removeprefix("Error: ")
    assert message.startswith(case.prefix), f"{message!r} should start with {case.prefix!r}"
    for phrase in case.wording:
        assert phrase in message, f"{phrase!r} not in {message!r}"
    assert stderr.rstrip().endswith("nothing was submitted"), stderr


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_one_clear_error_and_nothing_is_paid(
    case: Case, command: str, repo: Repo, sim: Simulator
) -> None:
    """Each bad input: exit 1, one message with file, line, field and wording; no POST, no state."""
    case.build(repo.path)
    result = invoke(repo.path, sim, command)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert_one_clear_message(case, result.exit_code, result.stdout, result.stderr)
    assert_untouched(repo.path, sim)


SUBPROCESS_CASES = ["yaml-colon-in-plain-value", "misspelt-resoluton", "image-leaves-repo",
                    "config-defaults-typo", "file-not-utf8", "name-duplicate-across-files"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.id in SUBPROCESS_CASES], ids=lambda c: c.id)
def test_real_process_prints_no_traceback(case: Case, repo: Repo) -> None:
    """As a real subprocess, validate, plan and apply each print one message, exit 1, pay nothing."""
    assert repo.sim is not None
    case.build(repo.path)
    for command in COMMANDS:
        result = repo.run_process(*COMMANDS[command])
        assert_one_clear_message(case, result.returncode, result.stdout, result.stderr)
    assert_untouched(repo.path, repo.sim)


def test_corpus_covers_every_case_once() -> None:
    """Case ids are unique, so a failing id points at exactly one row."""
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids))
    assert set(SUBPROCESS_CASES) <= set(ids)


# -- accepted forms -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Good:
    """A repo that must validate, plan and apply, with what each POST body must hold."""

    id: str
    files: dict[str, str | bytes]
    posts: int
    check: Callable[[list[dict[str, Any]]], None] = field(default=lambda bodies: None)


def _duration_is_number(bodies: list[dict[str, Any]]) -> None:
    value = bodies[0]["parameters"]["durationSeconds"]
    assert value == 8 and type(value) is int


def _jpeg(bodies: list[dict[str, Any]]) -> None:
    assert bodies[0]["instances"][0]["image"]["mimeType"] == "image/jpeg"


def _explicit_defaults(bodies: list[dict[str, Any]]) -> None:
    assert bodies[0]["parameters"] == {
        "aspectRatio": "16:9", "resolution": "720p", "durationSeconds": 8, "enhancePrompt": True,
    }  # fmt: skip


def _prompts(*expected: str) -> Callable[[list[dict[str, Any]]], None]:
    def check(bodies: list[dict[str, Any]]) -> None:
        assert sorted(b["instances"][0]["prompt"] for b in bodies) == sorted(expected)

    return check


def _vertical(bodies: list[dict[str, Any]]) -> None:
    assert bodies[0]["parameters"]["aspectRatio"] == "9:16"


def _from_config(bodies: list[dict[str, Any]]) -> None:
    assert bodies[0]["parameters"]["resolution"] == "1080p"
    assert bodies[0]["parameters"]["durationSeconds"] == 8


def _text_only(bodies: list[dict[str, Any]]) -> None:
    assert set(bodies[0]["instances"][0]) == {"prompt"}  # YAML's null is "not set"


GOOD = [
    Good("durationSeconds-string-8", {"specs/a.yaml": HEAD + 'durationSeconds: "8"\n'}, 1,
         _duration_is_number),
    Good("jpeg-image", {"specs/a.yaml": HEAD + "image: ../assets/first.jpg\n",
                        "assets/first.jpg": jpeg_bytes()}, 1, _jpeg),
    Good("explicit-defaults", {"specs/a.yaml": HEAD + 'aspectRatio: "16:9"\nresolution: 720p\n'
                               "durationSeconds: 8\nenhancePrompt: true\n"}, 1, _explicit_defaults),
    Good("multi-document", {"specs/a.yaml": f"{HEAD}---\n{NEIGHBOUR}---\n"}, 2,
         _prompts("A red kite over a windy beach.", "Waves roll onto the sand at dusk.")),
    Good("nested-yml", {"specs/social/clips/short.yml": HEAD}, 1,
         _prompts("A red kite over a windy beach.")),
    Good("aspectRatio-unquoted", {"specs/a.yaml": HEAD + "aspectRatio: 9:16\n"}, 1, _vertical),
    Good("config-defaults", {"reconcile.yaml": f"defaults:\n  model: {MODEL}\n  resolution: 1080p\n",
                             "specs/a.yaml": NOT_MODEL}, 1, _from_config),
    Good("image-and-lastFrame-null", {"specs/a.yaml": HEAD + "image: ~\nlastFrame:\n"}, 1,
         _text_only),
    Good("config-empty-sections", {"reconcile.yaml": "defaults:\n  # none yet\nlimits:\n",
                                   "specs/a.yaml": HEAD}, 1),
]  # fmt: skip


@pytest.mark.parametrize("good", [pytest.param(g, id=g.id) for g in GOOD])
def test_accepted_forms_validate_plan_and_apply(good: Good, repo: Repo, sim: Simulator) -> None:
    """Accepted spellings validate, plan and apply, and reach the API in the API's own types."""
    write(repo.path, good.files)
    for command in COMMANDS:
        result = invoke(repo.path, sim, command)
        assert "Traceback" not in result.output
        assert result.exit_code == 0, f"{command}: {result.output}"
    assert "valid." in invoke(repo.path, sim, "validate").stdout
    bodies = [r.json for r in sim.requests if r.method == "POST"]
    assert sim.post_requests == good.posts == len(bodies)
    good.check(bodies)
    assert len(os.listdir(repo.path / "videos")) == good.posts
