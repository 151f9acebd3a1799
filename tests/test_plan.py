"""The planner as tables: desired specs, recorded generations, lock entries and files in, actions out.

``make_plan`` is pure, so every rule is a row: the inputs are plain ``Desired``/``Generation``/
``Output``/``LockEntry``/``Observed`` values and the expectation is the action each name gets.
The rows that matter most are the money rows: which situations may pay, and which must never.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from reconciler.config import Config, load_config
from reconciler.facts import ModelFacts
from reconciler.lifecycle import ActionKind, Generation, State
from reconciler.lockfile import LockEntry
from reconciler.plan import Action, Observed, Options, Plan, make_plan, output_path
from reconciler.spec import Desired, spec_key
from reconciler.store import Output

CREATE, REPLACE, RESUME = ActionKind.CREATE, ActionKind.REPLACE, ActionKind.RESUME
MATERIALIZE, REMOVE = ActionKind.MATERIALIZE, ActionKind.REMOVE
NOOP, BLOCKED = ActionKind.NOOP, ActionKind.BLOCKED
FAILED, MATERIALIZED, PENDING, UNKNOWN = (
    State.FAILED,
    State.MATERIALIZED,
    State.PENDING,
    State.UNKNOWN,
)
RUNNING, SUBMITTING, SUCCEEDED = State.RUNNING, State.SUBMITTING, State.SUCCEEDED

FAST = "veo-3.1-fast-generate-preview"
STANDARD = "veo-3.1-generate-preview"
SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_X = "e" * 64  # bytes nobody asked for: a file edited in place


def desired(
    name: str = "hero",
    *,
    model: str = FAST,
    prompt: str = "Slow drone shot over a misty pine forest at sunrise.",
    resolution: str = "720p",
    duration: int = 8,
) -> Desired:
    spec = Desired(
        name=name,
        file=f"specs/{name}.yaml",
        line=1,
        model=model,
        prompt=prompt,
        parameters={
            "aspectRatio": "16:9",
            "resolution": resolution,
            "durationSeconds": duration,
            "enhancePrompt": True,
            "personGeneration": None,
            "negativePrompt": None,
        },
    )
    return replace(spec, key=spec_key(spec))


HERO = desired()
HERO_EDITED = desired(prompt="Slow drone shot over a misty pine forest at dusk.")
RENAMED = replace(HERO, name="hero-wide")  # same content, same key, new name
INTRO = desired("intro", prompt="A title card fades in over black.")
CONFIG = Config()


def path(name: str, sha: str) -> str:
    return output_path(CONFIG, name, sha)


def gen(spec: Desired, state: str, **extra: Any) -> Generation:
    return Generation(
        spec_key=spec.key,
        name=spec.name,
        model=spec.model,
        resolution=spec.resolution,
        duration=spec.duration,
        cost=None,
        state=state,
        **extra,
    )


def done(spec: Desired, sha: str, **extra: Any) -> Generation:
    return gen(spec, MATERIALIZED, sha256=sha, bytes=1000, **extra)


def out(spec: Desired, sha: str, *, name: str | None = None) -> Output:
    name = name or spec.name
    return Output(name, spec.key, path(name, sha), sha, 1000, 1000, 1, "2026-01-01T00:00:00Z")


def lock(spec: Desired, sha: str, *, name: str | None = None) -> LockEntry:
    name = name or spec.name
    return LockEntry(name, spec.key, path(name, sha), sha, 1000, spec.model, "operations/x", None)


@dataclass
class Case:
    """One planning situation and the actions it must produce, by name."""

    specs: list[Desired]
    expect: dict[str, str]
    gens: list[Generation] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    locks: list[LockEntry] = field(default_factory=list)
    verified: dict[str, str] = field(default_factory=dict)
    cached: frozenset[str] = frozenset()
    options: Options = field(default_factory=Options)
    check: dict[str, Any] = field(default_factory=dict)  # attributes of the single action


def plan_of(case: Case) -> Plan:
    return make_plan(
        case.specs,
        {g.spec_key: g for g in case.gens},
        {o.name: o for o in case.outputs},
        {e.name: e for e in case.locks},
        Observed(verified=case.verified, cached=case.cached),
        CONFIG,
        case.options,
    )


UP_TO_DATE = dict(
    gens=[done(HERO, SHA_A)],
    outputs=[out(HERO, SHA_A)],
    verified={path("hero", SHA_A): SHA_A},
    cached=frozenset({SHA_A}),
)

CASES = {
    "new spec: create at list price": Case(
        [HERO],
        {"hero": CREATE},
        check=dict(key=HERO.key, cost=pytest.approx(0.80), seconds=8, old_path=None, spec=HERO),
    ),
    "materialized and verified at the expected path: nothing to do": Case(
        [HERO],
        {"hero": NOOP},
        **UP_TO_DATE,
        check=dict(path=path("hero", SHA_A), sha256=SHA_A, cost=None, seconds=0),
    ),
    "file missing, object cached: materialize for free": Case(
        [HERO],
        {"hero": MATERIALIZE},
        gens=[done(HERO, SHA_A)],
        outputs=[out(HERO, SHA_A)],
        cached=frozenset({SHA_A}),
        check=dict(path=path("hero", SHA_A), sha256=SHA_A, old_path=None, cost=None),
    ),
    "file edited in place, object cached: materialize again": Case(
        [HERO],
        {"hero": MATERIALIZE},
        gens=[done(HERO, SHA_A)],
        outputs=[out(HERO, SHA_A)],
        verified={path("hero", SHA_A): SHA_X},
        cached=frozenset({SHA_A}),
        check=dict(path=path("hero", SHA_A), sha256=SHA_A),
    ),
    "materialized, cache lost, file id known: download again, unpaid": Case(
        [HERO],
        {"hero": RESUME},
        gens=[done(HERO, SHA_A, file_id="abc")],
        outputs=[out(HERO, SHA_A)],
        check=dict(cost=None, seconds=0),
    ),
    "materialized, bytes gone everywhere and no file id: the only way back is paid": Case(
        [HERO],
        {"hero": CREATE},
        gens=[done(HERO, SHA_A)],
        outputs=[out(HERO, SHA_A)],
        check=dict(cost=pytest.approx(0.80), old_path=path("hero", SHA_A)),
    ),
    "materialized, bytes still in another verified file: materialize, free": Case(
        [HERO],
        {"hero": MATERIALIZE},
        gens=[done(HERO, SHA_A)],
        verified={"videos/copy.mp4": SHA_A},
        check=dict(path=path("hero", SHA_A), sha256=SHA_A),
    ),
    "spec edited: replace the name's video from the other key (paid)": Case(
        [HERO_EDITED],
        {"hero": REPLACE},
        **UP_TO_DATE,
        check=dict(key=HERO_EDITED.key, old_path=path("hero", SHA_A), cost=pytest.approx(0.80)),
    ),
    "spec reverted to a key with cached bytes: materialize, free": Case(
        [HERO],
        {"hero": MATERIALIZE},
        gens=[done(HERO, SHA_A), done(HERO_EDITED, SHA_B)],
        outputs=[out(HERO_EDITED, SHA_B)],
        verified={path("hero", SHA_B): SHA_B},
        cached=frozenset({SHA_A, SHA_B}),
        check=dict(key=HERO.key, path=path("hero", SHA_A), old_path=path("hero", SHA_B), cost=None),
    ),
    "spec removed: its output leaves": Case(
        [],
        {"hero": REMOVE},
        **UP_TO_DATE,
        check=dict(path=path("hero", SHA_A), key=None, cost=None),
    ),
    "spec removed, known only from the lock: its output leaves": Case(
        [],
        {"hero": REMOVE},
        locks=[lock(HERO, SHA_A)],
        verified={path("hero", SHA_A): SHA_A},
        check=dict(path=path("hero", SHA_A)),
    ),
    "renamed spec (same key): new name materialized free, old name removed": Case(
        [RENAMED],
        {"hero-wide": MATERIALIZE, "hero": REMOVE},
        **UP_TO_DATE,
    ),
    "pending (an answered error proved nothing was accepted): create": Case(
        [HERO],
        {"hero": CREATE},
        gens=[gen(HERO, PENDING, error="429: slow down")],
        check=dict(cost=pytest.approx(0.80), state=PENDING),
    ),
    "failed: blocked until the spec changes": Case(
        [HERO],
        {"hero": BLOCKED},
        gens=[gen(HERO, FAILED, error="refused by content policy")],
        check=dict(reason="refused by content policy", cost=None, state=FAILED),
    ),
    "failed with --retry-failed: create (paid)": Case(
        [HERO],
        {"hero": CREATE},
        gens=[gen(HERO, FAILED, error="refused by content policy")],
        options=Options(retry_failed=True),
        check=dict(cost=pytest.approx(0.80)),
    ),
    "failed, --resubmit-unknown does not unblock it": Case(
        [HERO],
        {"hero": BLOCKED},
        gens=[gen(HERO, FAILED, error="filtered")],
        options=Options(resubmit_unknown=True),
    ),
    "unknown: blocked, never resubmitted by itself": Case(
        [HERO],
        {"hero": BLOCKED},
        gens=[gen(HERO, UNKNOWN, error="connection dropped after the POST")],
        check=dict(cost=None, state=UNKNOWN),
    ),
    "unknown with --resubmit-unknown: create (paid)": Case(
        [HERO],
        {"hero": CREATE},
        gens=[gen(HERO, UNKNOWN)],
        options=Options(resubmit_unknown=True),
        check=dict(cost=pytest.approx(0.80)),
    ),
    "unknown, --retry-failed does not unblock it": Case(
        [HERO],
        {"hero": BLOCKED},
        gens=[gen(HERO, UNKNOWN)],
        options=Options(retry_failed=True),
    ),
    "--replace: replace even when up to date": Case(
        [HERO],
        {"hero": REPLACE},
        **UP_TO_DATE,
        options=Options(replace=frozenset({"hero"})),
        check=dict(key=HERO.key, old_path=path("hero", SHA_A), cost=pytest.approx(0.80)),
    ),
    "--replace of another name leaves this one alone": Case(
        [HERO],
        {"hero": NOOP},
        **UP_TO_DATE,
        options=Options(replace=frozenset({"intro"})),
    ),
    "--target: only the named specs are planned": Case(
        [HERO, INTRO],
        {"intro": CREATE},
        options=Options(targets=frozenset({"intro"})),
    ),
    "--target: an untargeted removed spec is not removed": Case(
        [INTRO],
        {"intro": CREATE},
        **UP_TO_DATE,
        options=Options(targets=frozenset({"intro"})),
    ),
    "--target naming a removed spec removes it": Case(
        [INTRO],
        {"hero": REMOVE},
        **UP_TO_DATE,
        options=Options(targets=frozenset({"hero"})),
    ),
    "fresh clone: no generations, lock entry whose file verifies: nothing to do": Case(
        [HERO],
        {"hero": NOOP},
        locks=[lock(HERO, SHA_A)],
        verified={path("hero", SHA_A): SHA_A},
        check=dict(path=path("hero", SHA_A), sha256=SHA_A),
    ),
    "fresh clone with a renamed spec: materialize from the verified file, free": Case(
        [RENAMED],
        {"hero-wide": MATERIALIZE, "hero": REMOVE},
        locks=[lock(HERO, SHA_A)],
        verified={path("hero", SHA_A): SHA_A},
    ),
    "lock entry whose file is missing: create": Case(
        [HERO],
        {"hero": CREATE},
        locks=[lock(HERO, SHA_A)],
        check=dict(cost=pytest.approx(0.80), old_path=path("hero", SHA_A)),
    ),
    "lock entry whose file has other bytes: create": Case(
        [HERO],
        {"hero": CREATE},
        locks=[lock(HERO, SHA_A)],
        verified={path("hero", SHA_A): SHA_X},
    ),
    "lock entry whose file is missing but whose bytes are cached: materialize, free": Case(
        [HERO],
        {"hero": MATERIALIZE},
        locks=[lock(HERO, SHA_A)],
        cached=frozenset({SHA_A}),
        check=dict(path=path("hero", SHA_A), sha256=SHA_A, cost=None),
    ),
    "lock entry of another key does not count as this key's bytes": Case(
        [HERO_EDITED],
        {"hero": REPLACE},
        locks=[lock(HERO, SHA_A)],
        verified={path("hero", SHA_A): SHA_A},
        cached=frozenset({SHA_A}),
        check=dict(key=HERO_EDITED.key, old_path=path("hero", SHA_A)),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_make_plan(case: Case) -> None:
    """Each planning situation yields exactly the expected action per name."""
    plan = plan_of(case)
    assert {a.name: a.kind for a in plan.actions} == case.expect
    if case.check:
        (action,) = [a for a in plan.actions if a.kind != REMOVE] or plan.actions
        assert {k: getattr(action, k) for k in case.check} == case.check


@pytest.mark.parametrize("state", [SUBMITTING, RUNNING, SUCCEEDED])
@pytest.mark.parametrize(
    "options",
    [
        Options(),
        Options(replace=frozenset({"hero"})),
        Options(retry_failed=True, resubmit_unknown=True),
    ],
    ids=["plain", "--replace", "--retry-failed --resubmit-unknown"],
)
def test_in_flight_resumes_and_is_never_paid(state: str, options: Options) -> None:
    """A submitting, running or succeeded generation is resumed, never paid for again, whatever flags."""
    case = Case(
        [HERO_EDITED],
        {"hero": RESUME},
        gens=[done(HERO, SHA_A), gen(HERO_EDITED, state, operation="operations/op1")],
        outputs=[out(HERO, SHA_A)],
        verified={path("hero", SHA_A): SHA_A},
        options=options,
    )
    plan = plan_of(case)
    (action,) = plan.actions
    assert (action.kind, action.key, action.state) == (RESUME, HERO_EDITED.key, state)
    assert plan.paid == []
    assert (plan.cost, plan.seconds) == (0.0, 0)


PRICES = {
    "fast 720p 8 s": (desired(), Config(), 0.80),
    "fast 720p 4 s": (desired(duration=4), Config(), 0.40),
    "fast 1080p 8 s": (desired(resolution="1080p"), Config(), 0.96),
    "fast 4k 8 s": (desired(resolution="4k"), Config(), 2.40),
    "standard 720p 6 s": (desired(model=STANDARD, duration=6), Config(), 2.40),
    "standard 1080p 8 s": (desired(model=STANDARD, resolution="1080p"), Config(), 3.20),
    "standard 4k 8 s": (desired(model=STANDARD, resolution="4k"), Config(), 4.80),
    "custom price from Config": (
        desired(),
        Config(models={FAST: ModelFacts({"720p": 0.15})}),
        1.20,
    ),
    "no price for the model: unknown": (desired(model=STANDARD), Config(models={}), None),
}


@pytest.mark.parametrize(("spec", "config", "cost"), PRICES.values(), ids=PRICES.keys())
def test_create_cost_is_price_times_seconds(
    spec: Desired, config: Config, cost: float | None
) -> None:
    """A create costs the configured price per second times the spec's duration."""
    plan = make_plan([spec], {}, {}, {}, Observed(), config)
    (action,) = plan.actions
    assert action.kind == CREATE
    assert action.cost == (None if cost is None else pytest.approx(cost))
    assert action.seconds == spec.duration
    assert plan.cost_known is (cost is not None)


def test_pricing_in_reconcile_yaml_overrides_one_entry_only(tmp_path: Path) -> None:
    """reconcile.yaml pricing replaces the entries it names and keeps the built-in others."""
    (tmp_path / "reconcile.yaml").write_text(
        "pricing:\n  veo-3.1-fast-generate-preview:\n    720p: 0.15\n"
    )
    config = load_config(tmp_path)
    specs = [desired(), desired("big", resolution="4k", prompt="Another prompt.")]
    plan = make_plan(specs, {}, {}, {}, Observed(), config)
    assert {a.name: a.cost for a in plan.actions} == {
        "hero": pytest.approx(1.20),
        "big": pytest.approx(2.40),
    }


def action(kind: str, cost: float | None = None, seconds: int = 0) -> Action:
    return Action(f"{kind}-{cost}-{seconds}", kind, None, "", cost=cost, seconds=seconds)


TOTALS = {
    "nothing": ([], 0.0, 0, True, 0),
    "only free actions": (
        [action(NOOP), action(MATERIALIZE), action(RESUME), action(REMOVE), action(BLOCKED)],
        0.0,
        0,
        True,
        3,
    ),
    "creates and replaces add up": (
        [action(CREATE, 0.8, 8), action(REPLACE, 4.8, 8), action(NOOP)],
        5.6,
        16,
        True,
        2,
    ),
    "one unknown price makes the total unknown": (
        [action(CREATE, 0.8, 8), action(CREATE, None, 6)],
        0.8,
        14,
        False,
        2,
    ),
}


@pytest.mark.parametrize(
    ("actions", "cost", "seconds", "known", "changes"), TOTALS.values(), ids=TOTALS.keys()
)
def test_plan_totals(
    actions: list[Action], cost: float, seconds: int, known: bool, changes: int
) -> None:
    """Plan.cost and .seconds count paid actions only; .changes leaves out no-ops and blocked ones."""
    plan = Plan(actions)
    assert plan.cost == pytest.approx(cost)
    assert plan.seconds == seconds
    assert plan.cost_known is known
    assert len(plan.changes) == changes
    assert all(a.kind not in (NOOP, BLOCKED) for a in plan.changes)


def test_actions_are_sorted_by_name() -> None:
    """Actions come out sorted by name, whatever order the specs were loaded in."""
    specs = [desired(n, prompt=f"Prompt {n}.") for n in ("zeta", "alpha", "mid")]
    plan = make_plan(specs, {}, {"beta": out(HERO, SHA_A, name="beta")}, {}, Observed(), CONFIG)
    assert [a.name for a in plan.actions] == ["alpha", "beta", "mid", "zeta"]


def test_output_path_follows_config_output_dir() -> None:
    """Outputs live at <outputDir>/<name>.<first 16 hex of sha256>.mp4."""
    assert output_path(Config(output_dir="clips/veo"), "hero", SHA_A) == (
        f"clips/veo/hero.{'a' * 16}.mp4"
    )


def test_two_specs_with_one_key_are_paid_once() -> None:
    """Two names asking for the same video (one key) cost one generation in the estimate."""
    twin = replace(HERO, name="hero-copy")
    plan = make_plan([HERO, twin, INTRO], {}, {}, {}, Observed(), CONFIG)
    assert {a.name: a.kind for a in plan.actions} == {
        "hero": CREATE,
        "hero-copy": CREATE,
        "intro": CREATE,
    }
    assert plan.cost == pytest.approx(1.60)
    assert plan.seconds == 16
    assert sorted(a.cost for a in plan.actions if a.key == HERO.key) == [0.0, 0.80]
