"""Repo-wide settings: ``reconcile.yaml`` (defaults, output folder, prices, limits) and the API env.

Everything here is read once per run and is plain data afterwards, so the planner and the engine
never touch the environment or the file system for settings.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from .errors import Problem, ReconcileError, SpecErrors
from .facts import CATALOG, Duration, Feature, ModelFacts, Resolution
from .yamlio import load_documents, pydantic_problems

CONFIG_FILE = "reconcile.yaml"
DEFAULT_SUBMIT_BASE = "https://gptproto.com"
DEFAULT_QUERY_BASE = "https://api.gptproto.com"
API_KEY_ENV = "GPTPROTO_API_KEY"
API_BASE_ENV = "RECONCILE_API_BASE"
STATE_ENV = "RECONCILE_STATE"  # a libpq URL: shared state on PostgreSQL; wins over `state:`
STATE_SCHEMES = ("postgresql", "postgres")
PASSWORD_FIX = (
    "keep passwords out of reconcile.yaml (it is committed): libpq reads PGPASSWORD, ~/.pgpass "
    "or PGSERVICEFILE, or put the whole URL in RECONCILE_STATE"
)
OBJECTS_ENV = "RECONCILE_OBJECTS"


def objects_url(value: str) -> str:
    """Check a shared object store's URL (``s3://bucket[/prefix]``); the canonical form back.

    Only where the objects live: the endpoint and credentials come from the standard AWS
    environment, never from reconcile.yaml, so a URL carrying either is refused."""
    try:
        parts = urlsplit(value.strip())
    except ValueError:
        parts = None
    if parts is None or parts.scheme != "s3" or not parts.hostname:
        # The value is not echoed: a mistyped one may hold a secret.
        raise ValueError("must be an s3://BUCKET[/PREFIX] URL")
    if parts.username or parts.password or parts.port or parts.query or parts.fragment:
        raise ValueError(
            "must be s3://BUCKET[/PREFIX] only: the endpoint and credentials come from the AWS "
            "environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_PROFILE...)"
        )
    prefix = "/".join(p for p in parts.path.split("/") if p)
    return f"s3://{parts.netloc}" + (f"/{prefix}" if prefix else "")


def output_dir(value: str) -> str:
    """``outputDir`` checked (a relative folder inside the repo, of its own), in its plain form."""
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts or "\\" in value:
        raise ValueError("must be a relative folder inside the repo, without '..'")
    if not path.parts:
        raise ValueError(
            f"{value!r} is the repo itself: outputs need a folder of their own, such as videos"
        )
    if not value.isprintable():
        raise ValueError("holds a control character (such as NUL): give a plain folder name")
    if path.parts[0] in ("state", "specs", ".git"):
        raise ValueError(f"must not be inside {path.parts[0]}/")
    return str(path)


@functools.cache
def schema() -> tuple[Any, dict[str, tuple[str, ...]]]:
    """The pydantic model of reconcile.yaml, and the keys allowed at each level of it (for "did
    you mean" on a typo). Built on first use: a reconcile.yaml of the plain shape ``_plain``
    checks by itself (or none) spares a cold load pydantic's import and model building."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class Limits(BaseModel):
        """``limits:``: submit rate and concurrency caps for a team that knows its quota (DESIGN.md)."""

        model_config = ConfigDict(extra="forbid")

        submitPerMinute: float | None = Field(default=None, gt=0, allow_inf_nan=False)
        concurrency: int | None = Field(default=None, ge=1, le=64)

    class Retries(BaseModel):
        """``retries:``: how often a failed operation is resubmitted before it stays failed."""

        model_config = ConfigDict(extra="forbid")

        # A failed operation is not billed; resubmitting it twice in total is what DESIGN.md allows.
        operationFailed: int = Field(default=2, ge=0, le=10)
        # A 5xx answer to a POST whose body was sent is ambiguous through a gateway: the upstream may
        # have accepted (and billed) the job. Off: the spec becomes unknown. On: it is resubmitted,
        # which may pay twice for one video; only for a provider known to answer 5xx before accepting.
        resubmitAfterServerError: bool = False

    USD = Annotated[float, Field(ge=0, allow_inf_nan=False)]

    class ModelDecl(BaseModel):
        """One entry of ``models:``: a model id the provider serves, declared or overridden. Fields
        left out keep the built-in entry's (or, for a new id, allow everything but have no price)."""

        model_config = ConfigDict(extra="forbid")

        price: dict[Resolution, USD] | None = None
        resolutions: list[Resolution] | None = Field(default=None, min_length=1)
        durations: list[Duration] | None = Field(default=None, min_length=1)
        features: list[Feature] | None = None

    class Budget(BaseModel):
        """``budget:``: USD caps on what POSTs that may be billed cost, per run and per UTC day/month."""

        model_config = ConfigDict(extra="forbid")

        perRun: USD | None = None
        perDay: USD | None = None
        perMonth: USD | None = None

    class ConfigFile(BaseModel):
        """The schema of reconcile.yaml; unknown keys are errors, as in specs."""

        model_config = ConfigDict(extra="forbid")

        defaults: dict[str, Any] = Field(default_factory=dict)
        outputDir: str = "videos"
        models: dict[str, ModelDecl] = Field(default_factory=dict)
        pricing: dict[str, dict[str, USD]] = Field(default_factory=dict)
        limits: Limits = Field(default_factory=Limits)
        retries: Retries = Field(default_factory=Retries)
        budget: Budget = Field(default_factory=Budget)
        state: str | None = (
            None  # postgresql://HOST/DB: generations and the ledger shared by a team
        )

        @field_validator("state")
        @classmethod
        def _state_url(cls, value: str | None) -> str | None:
            if value is None:
                return None
            problem = state_url_problem(value)
            if problem is None and _has_password(value):
                problem = f"holds a password: {PASSWORD_FIX}"
            if problem is not None:
                raise ValueError(problem)
            return value

        objects: str | None = None  # the shared object store, s3://bucket/prefix

        @field_validator("objects")
        @classmethod
        def _objects_url(cls, value: str | None) -> str | None:
            return None if value is None else objects_url(value)

        @field_validator(
            "defaults", "models", "pricing", "limits", "retries", "budget", mode="before"
        )
        @classmethod
        def _empty_section(cls, value: Any) -> Any:
            # `defaults:` with only comments under it is an empty section, not an error.
            return {} if value is None else value

        @field_validator("outputDir")
        @classmethod
        def _inside_repo(cls, value: str) -> str:
            return output_dir(value)

    # The keys allowed at each level of reconcile.yaml, for "did you mean" on a typo.
    known: dict[str, tuple[str, ...]] = {
        "": tuple(ConfigFile.model_fields),
        "limits": tuple(Limits.model_fields),
        "retries": tuple(Retries.model_fields),
        "budget": tuple(Budget.model_fields),
        "models.*": tuple(ModelDecl.model_fields),
    }
    return ConfigFile, known


@dataclass(frozen=True)
class Config:
    """Settings after validation, with the built-in price table merged under the user's."""

    defaults: dict[str, Any] = field(default_factory=dict)
    output_dir: str = "videos"
    models: dict[str, ModelFacts] = field(default_factory=lambda: dict(CATALOG))
    submit_per_minute: float | None = None
    concurrency: int | None = None
    operation_failed_retries: int = 2
    resubmit_after_server_error: bool = False
    budget_per_run: float | None = None
    budget_per_day: float | None = None
    budget_per_month: float | None = None
    state: str | None = None  # `state:` of reconcile.yaml (RECONCILE_STATE wins: ``state_url``)
    objects: str | None = None  # s3://bucket/prefix: the cache shared through a bucket
    # dotted key path in reconcile.yaml -> line, so later checks (the defaults) can point at it
    lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def price_per_second(self, model: str, resolution: str) -> float | None:
        """None for a pair nobody priced, so the plan can say "unknown" rather than guess $0."""
        facts = self.models.get(model)
        return facts.price.get(resolution) if facts else None


def load_config(repo: Path) -> Config:
    """Read reconcile.yaml if present; raise SpecErrors naming the file and field otherwise."""
    path = repo / CONFIG_FILE
    if not path.exists():
        return Config()
    docs, problems = load_documents(path, CONFIG_FILE)
    if problems:
        raise SpecErrors(problems)
    if len(docs) > 1:
        raise SpecErrors([Problem(CONFIG_FILE, "must hold one YAML document", line=docs[1].line)])
    if not docs:
        return Config()
    doc = docs[0]
    if not isinstance(doc.data, dict):
        raise SpecErrors([Problem(CONFIG_FILE, "must be a mapping of settings", line=doc.line)])
    plain = _plain(doc.data)
    if plain is not None:
        return replace(plain, lines=dict(doc.key_lines))
    from pydantic import ValidationError

    config_file, known = schema()
    try:
        parsed = config_file.model_validate(doc.data)
    except ValidationError as exc:
        raise SpecErrors(pydantic_problems(exc, CONFIG_FILE, doc, known=known)) from None
    return Config(
        defaults=parsed.defaults,
        output_dir=parsed.outputDir,
        models=catalog(parsed.models, parsed.pricing),
        submit_per_minute=parsed.limits.submitPerMinute,
        concurrency=parsed.limits.concurrency,
        operation_failed_retries=parsed.retries.operationFailed,
        resubmit_after_server_error=parsed.retries.resubmitAfterServerError,
        budget_per_run=parsed.budget.perRun,
        budget_per_day=parsed.budget.perDay,
        budget_per_month=parsed.budget.perMonth,
        state=parsed.state,
        objects=parsed.objects,
        lines=dict(doc.key_lines),
    )


def _plain(data: dict[Any, Any]) -> Config | None:
    """The settings of a reconcile.yaml that holds only ``defaults`` (checked later, against the
    spec fields) and ``outputDir``, in plain shapes: exactly what the pydantic model gives for
    it. None for anything else, which the model then checks with its own errors."""
    if not _PLAIN_KEYS.issuperset(data):
        return None
    defaults = data.get("defaults")
    defaults = {} if defaults is None else defaults
    out = data.get("outputDir", "videos")
    if type(defaults) is not dict or not all(type(k) is str for k in defaults):
        return None
    if type(out) is not str:
        return None
    try:
        out = output_dir(out)
    except ValueError:
        return None
    return Config(defaults=dict(defaults), output_dir=out)


_PLAIN_KEYS = frozenset(("defaults", "outputDir"))


def state_url(config: Config, env: Mapping[str, str] | None = None) -> str | None:
    """Where generations and the ledger live: a PostgreSQL URL, or None for the local sqlite db.
    ``RECONCILE_STATE`` wins over ``state:``, so CI can point a checkout at the team's database
    (a password there is the user's choice: the environment is not committed)."""
    env = os.environ if env is None else env
    if STATE_ENV not in env:
        return config.state
    value = env[STATE_ENV].strip()
    if not value:
        # A CI secret that is missing expands to nothing; the runner's own sqlite db would see
        # none of the team's operations in flight and pay for them again.
        raise ReconcileError(
            f"{STATE_ENV} is set but empty (a missing CI secret?): set it to the team's "
            "postgresql:// URL, or unset it to use reconcile.yaml's state: or the local sqlite db"
        )
    problem = state_url_problem(value)
    if problem is not None:
        raise ReconcileError(f"{STATE_ENV}: {problem}")
    return value


def state_url_problem(value: str) -> str | None:
    """Why ``value`` is not a libpq URL of a PostgreSQL database (None: it is one)."""
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in STATE_SCHEMES or not value.isprintable():
        return (
            "must be a PostgreSQL URL such as postgresql://HOST/DATABASE (leave it out for the "
            "local sqlite state)"
        )
    return None


def _split_libpq(url: str) -> tuple[str, str, str, str]:
    """(scheme, user, password or "", the rest) as libpq splits a URL: the user part runs to the
    first ``@`` before any ``/``, so a password may hold ``?`` or ``#`` (urlsplit would cut it
    there and show the rest)."""
    scheme, _, rest = url.partition("://")
    slash = rest.find("/")
    at = rest.find("@", 0, slash if slash >= 0 else len(rest))
    if at < 0:
        return scheme, "", "", rest
    user, _, password = rest[:at].partition(":")
    return scheme, user, password, rest[at + 1 :]


_SECRET_PARAMS = ("password", "sslpassword")


def _has_password(url: str) -> bool:
    _, _, password, rest = _split_libpq(url)
    query = rest.partition("?")[2]
    in_query = any(k in _SECRET_PARAMS for k, _ in parse_qsl(query, keep_blank_values=True))
    return bool(password) or in_query


def state_label(url: str) -> str:
    """The URL as it may be shown (status, errors): never its password, however it is written."""
    scheme, user, _, rest = _split_libpq(url)
    where, _, query = rest.partition("?")
    kept = "&".join(p for p in query.split("&") if p and p.split("=", 1)[0] not in _SECRET_PARAMS)
    return f"{scheme}://{user + '@' if user else ''}{where}" + (f"?{kept}" if kept else "")


def shared_objects(config: Config, env: dict[str, str] | None = None) -> str | None:
    """The shared object store in use: ``RECONCILE_OBJECTS`` wins over reconcile.yaml's
    ``objects``; None for the local cache alone (an empty variable turns the yaml's off)."""
    env = dict(os.environ) if env is None else env
    if OBJECTS_ENV not in env:
        return config.objects
    value = env[OBJECTS_ENV].strip()
    if not value:
        return None
    try:
        return objects_url(value)
    except ValueError as exc:
        raise ReconcileError(f"{OBJECTS_ENV}: {exc}") from None


def catalog(
    declared: dict[str, Any], pricing: dict[str, dict[str, float]]
) -> dict[str, ModelFacts]:
    """The built-in catalog with reconcile.yaml's ``models:`` merged over it, then the older
    ``pricing:`` table folded in (a price for an id nobody declared declares it)."""
    models = dict(CATALOG)
    for model, decl in declared.items():
        base = models.get(model) or ModelFacts(price={})
        models[model] = ModelFacts(
            price={**base.price, **{str(res): usd for res, usd in (decl.price or {}).items()}},
            resolutions=tuple(decl.resolutions) if decl.resolutions else base.resolutions,
            durations=tuple(decl.durations) if decl.durations else base.durations,
            features=frozenset(decl.features) if decl.features is not None else base.features,
        )
    for model, table in pricing.items():
        base = models.get(model) or ModelFacts(price={})
        models[model] = replace(base, price={**base.price, **table})
    return models


@dataclass(frozen=True)
class ApiSettings:
    """Where to send requests and with which key; the key never leaves this object but in headers."""

    submit_base: str
    query_base: str
    api_key: str | None = field(repr=False, default=None)

    @property
    def origins(self) -> frozenset[tuple[str, str, int | None]]:
        """(scheme, host, port) of the configured bases: the only places the key may be sent."""
        parts = (urlsplit(base) for base in (self.submit_base, self.query_base))
        return frozenset((p.scheme, p.hostname or "", p.port) for p in parts)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ApiSettings:
        """Read and check the settings: a malformed base or key must fail here, before any claim,
        not inside a POST where it would look like a request that may have been sent."""
        env = dict(os.environ) if env is None else env
        base = env.get(API_BASE_ENV, "").strip().rstrip("/")
        if base:
            try:
                parts = urlsplit(base)
                ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
            except ValueError:
                ok = False
            if not ok:
                raise ReconcileError(
                    f"{API_BASE_ENV}={base!r} is not a base URL: use http(s)://HOST[:PORT]"
                )
        key = env.get(API_KEY_ENV, "").strip() or None
        if key is not None and not (key.isascii() and key.isprintable() and " " not in key):
            raise ReconcileError(
                f"{API_KEY_ENV} holds characters an API key cannot have (spaces, control or "
                "non-ASCII characters): check how it was exported"
            )
        return cls(
            submit_base=base or DEFAULT_SUBMIT_BASE,
            query_base=base or DEFAULT_QUERY_BASE,
            api_key=key,
        )
