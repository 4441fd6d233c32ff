"""Configuration, read once at start from ``NOTEBURST_*`` environment variables.

With nothing set, Noteburst runs the embedded default: SQLite in
``data_dir``, an in-process queue and a Jupyter server it starts itself.
Setting ``NOTEBURST_DATABASE_URL`` and ``NOTEBURST_REDIS_URL`` turns the same
code into the Postgres/Redis service.

The settings are grouped by concern (``config.jupyter``, ``config.hub``,
``config.limits``, ``config.outputs``, ``config.workers``,
``config.graphql``, ``config.auth``, ``config.webhooks``,
``config.retention``), so that a service
can take its group whole and a new setting is declared in one place.  The
environment stays flat: each grouped field keeps the variable it always had
(``config.webhooks.max_attempts`` is ``NOTEBURST_WEBHOOK_MAX_ATTEMPTS``),
named once, by the field's ``validation_alias`` (or its name when they are
the same); ``Config(...)`` accepts those flat names as keywords too.  The
variables tables of docs/configuration.md are generated from these models
(``python -m noteburst.config``), and a test fails while the page is stale.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import sys
from functools import cache
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from .constants import (
    ADMIN_SCOPE,
    DEFAULT_KERNEL_NAME,
    DEFAULT_MAX_NOTEBOOK_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    USER_SCOPE,
)

__all__ = [
    "ENV_PREFIX",
    "AuthSettings",
    "Config",
    "GraphQLSettings",
    "HubSettings",
    "JupyterSettings",
    "LimitSettings",
    "OutputSettings",
    "RetentionSettings",
    "Variable",
    "WebhookSettings",
    "WorkerSettings",
    "host_pattern",
    "render_configuration_docs",
    "render_variables",
    "variables",
]

ENV_PREFIX = "NOTEBURST_"

DOCS_BEGIN = (
    "<!-- Generated from noteburst/config.py by "
    "`python3 -m uv run python -m noteburst.config`: edit the models, "
    "not these tables. -->"
)
DOCS_END = "<!-- End of the generated tables. -->"


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "noteburst"


def _empty_is_unset(value: object) -> object:
    return None if value == "" else value


_EmptyIsUnset = BeforeValidator(_empty_is_unset)
"""An empty variable (``NOTEBURST_REDIS_URL=``) means unset."""


def _shown(default: str) -> dict[str, Any]:
    """Field metadata: the default as docs/configuration.md shows it."""
    return {"doc_default": default}


class _Group(BaseModel):
    """One concern's settings (a field of :class:`Config`).

    A field whose flat name differs from its name in the group states it
    as ``validation_alias``: ``NOTEBURST_`` plus that name in capitals is
    its environment variable, and ``Config`` accepts it as a keyword.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", validate_by_name=True, validate_by_alias=True
    )


class JupyterSettings(_Group):
    """Where kernels run and how they are started."""

    url: Annotated[str | None, _EmptyIsUnset] = Field(
        None,
        validation_alias="jupyter_url",
        description=(
            "Base URL of a running jupyter_server to execute on. Unset: "
            "Noteburst starts a local one on a free loopback port."
        ),
    )
    token: SecretStr | None = Field(
        None,
        validation_alias="jupyter_token",
        description="Token for jupyter_url (sent as a header).",
    )
    start_timeout: float = Field(
        60.0,
        gt=0,
        validation_alias="jupyter_start_timeout",
        description="Seconds to wait for the local server to start.",
    )
    lab_backend: Literal["local", "jupyterhub"] = Field(
        "local",
        description=(
            "Where kernels run: `local` (a jupyter_server Noteburst starts, or "
            "jupyter_url) or `jupyterhub` (labs spawned for bot users)."
        ),
    )
    kernel_names: list[str] | None = Field(
        None,
        description=(
            "Kernels submissions may ask for (JSON list). Unset: the "
            "kernelspecs installed beside Noteburst."
        ),
    )
    default_kernel_name: str = Field(
        DEFAULT_KERNEL_NAME,
        description="Kernel used when neither the request nor the notebook names one.",
    )
    warm_kernels: dict[str, int] = Field(
        default_factory=lambda: {"python3": 1},
        description=(
            "Started kernels each worker keeps ready per kernel name (JSON "
            'object, e.g. {"python3": 2}); an execution takes one and a '
            "replacement starts in the background. {} turns the pool off."
        ),
    )
    warm_kernels_max: int = Field(
        4,
        ge=0,
        description=(
            "The most kernels a kernel name's pool grows to when requests "
            "come faster than kernels start: it keeps warm_kernels ready plus "
            "what the recent arrival rate keeps in use or starting. At most "
            "warm_kernels (or 0): a fixed pool."
        ),
    )
    warm_up_code: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Code run in each pooled kernel before it is handed out, per "
            'kernel name (JSON object, e.g. {"python3": "import numpy"}).'
        ),
    )
    fork_kernels: bool = Field(
        True,
        description=(
            "Fork `python3` kernels of the Jupyter server Noteburst starts "
            "from a template process that has imported ipykernel and run "
            "warm_up_code's python3 code once (a fresh process per kernel, "
            "imports shared copy-on-write). false: start each the plain way."
        ),
    )
    kernel_start_timeout: float = Field(
        60.0, gt=0, description="Seconds to wait for a kernel to start."
    )
    http_timeout: float = Field(
        30.0, gt=0, description="Seconds for any single HTTP call to Jupyter."
    )
    kernel_retire_delay: float = Field(
        0.25,
        ge=0,
        description=(
            "Seconds a kernel that has run a notebook is left alone before it is "
            "shut down and its warm pool replacement starts, so that neither "
            "competes for the CPU with pushing the result to subscribers."
        ),
    )


class HubSettings(_Group):
    """The JupyterHub backend (``lab_backend=jupyterhub``)."""

    url: str | None = Field(
        None,
        validation_alias="hub_url",
        description=(
            "JupyterHub's public URL (the proxy), e.g. http://hub.example/. "
            "Required with lab_backend=jupyterhub."
        ),
    )
    token: SecretStr | None = Field(
        None,
        validation_alias="hub_token",
        description=(
            "JupyterHub service token with scopes admin:users, admin:servers, "
            "access:servers (sent as a header, never logged)."
        ),
    )
    identities: list[str] = Field(
        default_factory=lambda: [f"noteburst-bot-{i:02d}" for i in range(1, 9)],
        validation_alias="hub_identities",
        description=(
            "Bot users workers drive labs as (JSON list); each worker process "
            "leases one. Needs at least as many names as worker processes."
        ),
        json_schema_extra=_shown("noteburst-bot-01 … noteburst-bot-08"),
    )
    spawn_timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for JupyterHub to start a lab."
    )
    user_options: dict[str, Any] | None = Field(
        None,
        validation_alias="hub_user_options",
        description=(
            "Spawner options sent with every spawn request (JSON object), "
            "e.g. a KubeSpawner profile or image."
        ),
    )
    identity_wait_seconds: float = Field(
        120.0,
        ge=0,
        description=(
            "Seconds a starting worker waits for a free bot identity when all "
            "are leased (a crashed worker's lease expires after "
            "worker_lease_seconds); then it fails to start."
        ),
    )
    lab_idle_seconds: float | None = Field(
        600.0,
        gt=0,
        description=(
            "Seconds a JupyterHub lab may sit with no execution before the "
            "worker stops it (the next execution spawns it again). Unset: "
            "never."
        ),
    )


class LimitSettings(_Group):
    """What a submission may ask for, its defaults, and each user's share."""

    max_notebook_bytes: int = Field(
        DEFAULT_MAX_NOTEBOOK_BYTES,
        gt=0,
        description="Largest accepted notebook, in bytes of JSON (16 MiB).",
    )
    default_timeout_seconds: float = Field(
        DEFAULT_TIMEOUT_SECONDS,
        gt=0,
        description="Whole-execution timeout when a submission gives none.",
    )
    max_timeout_seconds: float = Field(
        24 * 3600.0,
        gt=0,
        description="Largest timeoutSeconds a submission may ask for.",
    )
    default_cell_timeout_seconds: float | None = Field(
        None,
        gt=0,
        description=(
            "Limit per cell when a submission gives no cellTimeoutSeconds. "
            "Unset: none (the whole-execution timeout still applies)."
        ),
    )
    default_no_output_timeout_seconds: float | None = Field(
        None,
        gt=0,
        description=(
            "Seconds a cell may send nothing (no output) before the execution "
            "times out, when a submission gives no noOutputTimeoutSeconds. "
            "Unset: none."
        ),
    )
    cache_environment_tag: str = Field(
        "default",
        max_length=200,
        description=(
            "Names the execution environment (image, packages, data) in the "
            "result cache's key: change it when the environment changes, and "
            "no result computed before is reused."
        ),
    )
    max_queued_per_user: Annotated[int | None, _EmptyIsUnset] = Field(
        200,
        ge=0,
        description=(
            "Most queued executions one user may have (sharing a run counts); "
            "a submission past it is refused with LimitExceeded. Unset: no limit."
        ),
    )
    max_running_per_user: Annotated[int | None, _EmptyIsUnset] = Field(
        50,
        ge=0,
        description=(
            "A user with this many running executions has further submissions "
            "refused with LimitExceeded until some finish. Unset: no limit."
        ),
    )
    max_submissions_per_minute: Annotated[int | None, _EmptyIsUnset] = Field(
        600,
        ge=0,
        description=(
            "Most submissions one user may make in any 60 seconds (cache hits "
            "count). Unset: no limit."
        ),
    )


class OutputSettings(_Group):
    """How much output an execution keeps, and how often it is written."""

    max_output_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description=(
            "Largest single output, in bytes (1 MiB): a longer stream is cut, "
            "larger rich data replaced, with a marker; the execution's "
            "outputsTruncated is then true."
        ),
    )
    max_notebook_output_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description=(
            "Budget of all outputs of one execution, in bytes (16 MiB); once "
            "spent, further outputs are dropped as they arrive (errors are "
            "kept) and one marker per cell says so."
        ),
    )
    flush_seconds: float = Field(
        0.2,
        gt=0,
        validation_alias="output_flush_seconds",
        description=(
            "Outputs of a running cell are gathered this long before they are "
            "written as one CELL_OUTPUTS event (a cell's end writes them at once)."
        ),
    )
    progress_flush_seconds: float = Field(
        0.1,
        ge=0,
        description=(
            "Least time between two writes of a running execution's cell events "
            "(CELL_STARTED, CELL_FINISHED, CELL_OUTPUTS); the end of an execution "
            "writes what is left at once, so a notebook that runs within this time "
            "has its events written, and pushed, together with its result."
        ),
    )
    flush_bytes: int = Field(
        65536,
        ge=1,
        validation_alias="output_flush_bytes",
        description=(
            "Outputs gathered for CELL_OUTPUTS events are written as soon as "
            "they reach this many bytes, without waiting for output_flush_seconds."
        ),
    )
    max_resent_bytes: int = Field(
        8 << 20,
        ge=0,
        validation_alias="output_max_resent_bytes",
        description=(
            "Bytes of outputs that CELL_OUTPUTS events written while a cell runs "
            "may send again (a clear_output animation, a display updated in a "
            "loop), per attempt; past it such changes are written only at the "
            "end of each cell, so a long animation cannot fill the events table."
        ),
    )


class WorkerSettings(_Group):
    """Worker processes: concurrency, and when a lost execution is run again."""

    threads: int = Field(
        4,
        ge=1,
        validation_alias="worker_threads",
        description="Executions one worker process runs at once.",
    )
    lease_seconds: float = Field(
        30.0,
        gt=0,
        validation_alias="worker_lease_seconds",
        description=(
            "A running execution whose worker has not renewed its lease for "
            "this long is considered lost and queued again."
        ),
    )
    max_attempts: int = Field(
        3,
        ge=1,
        description="Times an execution is started before a lost worker fails it.",
    )
    outage_seconds: float = Field(
        300.0,
        gt=0,
        validation_alias="worker_outage_seconds",
        description=(
            "How long a worker keeps retrying, with backoff, a write the "
            "database refused for being unreachable (a restart, a "
            "failover): the claim of an execution, its progress and its "
            "result.  A notebook that ran to its end is kept meanwhile and "
            "stored once the database is back; past this, the attempt is "
            "abandoned and the execution queued again."
        ),
    )
    shutdown_grace_seconds: float = Field(
        25.0,
        ge=0,
        validation_alias="worker_shutdown_grace_seconds",
        description=(
            "On SIGTERM (a rolling upgrade) a worker stops taking work and "
            "lets its running executions finish for this long; those still "
            "running are then handed back to the queue, to run on another "
            "worker (not failed). Keep Kubernetes' terminationGracePeriodSeconds "
            "about 15 s above it."
        ),
    )
    http_port: Annotated[int | None, _EmptyIsUnset] = Field(
        None,
        ge=0,
        le=65535,
        validation_alias="worker_http_port",
        description=(
            "Port a separate worker process (`noteburst worker`) serves "
            "/healthz, /readyz and /metrics on, bound to NOTEBURST_HOST; "
            "unset: none. The API serves its own beside /graphql."
        ),
    )


class GraphQLSettings(_Group):
    """Bounds on the GraphQL operations the API accepts."""

    max_depth: int = Field(
        12,
        ge=1,
        validation_alias="graphql_max_depth",
        description=(
            "Deepest selection a GraphQL operation may have (introspection "
            "not counted)."
        ),
    )
    max_aliases: int = Field(
        30,
        ge=0,
        validation_alias="graphql_max_aliases",
        description="Most aliases one GraphQL operation may use.",
    )
    max_tokens: int = Field(
        20_000,
        ge=100,
        validation_alias="graphql_max_tokens",
        description=(
            "Most tokens a GraphQL document may have; pass notebooks as "
            "variables, which do not count."
        ),
    )


class AuthSettings(_Group):
    """How callers are identified."""

    mode: Literal["none", "tokens", "proxy"] = Field(
        "none",
        validation_alias="auth_mode",
        description=(
            "How callers are identified: `none` (every request is one local "
            "user with admin rights; refused on a non-loopback host unless "
            "allow_unauthenticated is set), `tokens` (API tokens from "
            "`noteburst token create`, sent as `Authorization: Bearer`) or "
            "`proxy` (user and scopes from headers set by an authenticating "
            "ingress, trusted only from trusted_proxies)."
        ),
    )
    allow_unauthenticated: bool = Field(
        False,
        description=(
            "Let auth_mode=none serve on a non-loopback host (anyone who can "
            "reach it is an administrator); allowed_hosts must then be set."
        ),
    )
    trusted_proxies: list[IPv4Network | IPv6Network] = Field(
        default_factory=list,
        description=(
            "Peer addresses (JSON list of CIDRs) whose proxy headers are "
            "believed with auth_mode=proxy; a request from anywhere else is "
            "anonymous. The peer is the TCP peer (X-Forwarded-For is ignored)."
        ),
    )
    proxy_user_header: str = Field(
        "X-Auth-Request-User",
        description="Header naming the authenticated user (Gafaelfawr's).",
    )
    proxy_scopes_header: Annotated[str | None, _EmptyIsUnset] = Field(
        None,
        description=(
            "Header holding the user's scopes, space- or comma-separated "
            "(older Gafaelfawr: X-Auth-Request-Token-Scopes). Set it only if "
            "the proxy always overwrites it. Unset: proxy_default_scopes."
        ),
    )
    proxy_default_scopes: list[str] = Field(
        default_factory=lambda: [USER_SCOPE],
        description=(
            "Scopes of a proxied user when the scopes header is unset or "
            "absent (JSON list)."
        ),
    )
    proxy_admin_users: list[str] = Field(
        default_factory=list,
        description=(
            f"Proxied users given {ADMIN_SCOPE} whatever their headers say (JSON list)."
        ),
    )
    token_cache_seconds: float = Field(
        5.0,
        ge=0,
        description=(
            "How long a process remembers a checked API token: a revoked or "
            "expired token is refused at most this long after (0: never cached)."
        ),
    )


class WebhookSettings(_Group):
    """Which addresses webhooks may reach, and how deliveries are retried."""

    allowed_networks: list[str] = Field(
        default_factory=list,
        validation_alias="webhook_allowed_networks",
        description=(
            'Addresses or CIDR networks (JSON list, e.g. ["10.1.0.0/16"]) '
            "webhooks may reach although they are loopback, private, link-local "
            "or otherwise not public; everything else of that kind is refused."
        ),
    )
    timeout_seconds: float = Field(
        10.0,
        gt=0,
        validation_alias="webhook_timeout_seconds",
        description=(
            "Bound on one delivery attempt: resolving the name, connecting and "
            "the receiver's response headers."
        ),
    )
    resolve_timeout_seconds: float = Field(
        5.0,
        gt=0,
        validation_alias="webhook_resolve_timeout_seconds",
        description="Bound on resolving a webhook's host name (at submission too).",
    )
    max_attempts: int = Field(
        15,
        ge=1,
        validation_alias="webhook_max_attempts",
        description="Most delivery attempts of one webhook.",
    )
    horizon_seconds: float = Field(
        86400.0,
        gt=0,
        validation_alias="webhook_horizon_seconds",
        description=(
            "No attempt is scheduled later than this many seconds after the "
            "execution ended; the webhook is then given up (FAILED)."
        ),
    )
    initial_backoff_seconds: float = Field(
        5.0,
        gt=0,
        validation_alias="webhook_initial_backoff_seconds",
        description=(
            "Wait after the first failed attempt; it doubles after each one "
            "(with jitter: between half and all of it)."
        ),
    )
    max_backoff_seconds: float = Field(
        3600.0,
        gt=0,
        validation_alias="webhook_max_backoff_seconds",
        description="Longest wait between two delivery attempts.",
    )

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            # strict: host bits set (10.0.0.1/8) is a typo, not a network.
            ipaddress.ip_network(entry.strip(), strict=True)
        return value


class RetentionSettings(_Group):
    """How long finished executions are kept, and how they are purged."""

    days: float = Field(
        30.0,
        ge=0,
        allow_inf_nan=False,
        validation_alias="retention_days",
        description=(
            "Finished executions (with their events, renderings and webhook "
            "records) are deleted this many days after they ended, by the "
            "workers' periodic purge and by `noteburst db purge`; queued and "
            "running ones never are. Cached results go with their execution, "
            "so a result is reused for at most this long whatever maxAgeSeconds "
            "asks. An execution whose webhook is still being delivered is kept "
            "until the delivery ends. 0: keep everything forever."
        ),
    )
    batch_size: int = Field(
        500,
        ge=1,
        validation_alias="retention_batch_size",
        description=(
            "Executions deleted per transaction by a purge; each batch is its "
            "own short transaction, so the database's locks are held only "
            "that long (on SQLite, writers wait for the whole batch)."
        ),
    )


class Config(BaseSettings):
    """Noteburst's settings."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True
    )

    DOCS_TITLE: ClassVar[str] = "Service"
    DOCS_INTRO: ClassVar[str] = "Storage, queue, the address served, keys and logging."

    database_url: Annotated[str | None, _EmptyIsUnset] = Field(
        None,
        description=(
            "SQLAlchemy URL of the database, e.g. "
            "postgresql+asyncpg://user@host/db. Unset: SQLite in data_dir."
        ),
    )
    redis_url: Annotated[str | None, _EmptyIsUnset] = Field(
        None,
        description=(
            "Redis URL for the Dramatiq broker, e.g. redis://host:6379/0. "
            "Unset: an in-process broker and worker (embedded default)."
        ),
    )
    redis_namespace: str = Field(
        "noteburst", description="Prefix of the Dramatiq keys in Redis."
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description=(
            "Folder for the embedded SQLite database and the local Jupyter "
            "server's working directory."
        ),
        json_schema_extra=_shown("~/.local/share/noteburst"),
    )
    host: str = Field("127.0.0.1", description="Address `serve` binds.")
    port: int = Field(8000, description="Port `serve` binds.")
    public_url: str | None = Field(
        None,
        description=(
            "Base URL clients reach this service at, e.g. https://noteburst.example; "
            "webhook messages link to the result under it. Unset: "
            "http://host:port."
        ),
    )
    allowed_hosts: Annotated[list[str] | None, _EmptyIsUnset] = Field(
        None,
        description=(
            "Names requests may be addressed to (the Host header, port left "
            'out; JSON list, e.g. ["noteburst.example"]; "*.example.org" '
            'covers its subdomains, "*" any name); other requests get HTTP '
            "400, so that a web page on a name rebound to this address (DNS "
            "rebinding) cannot use it. Unset: on a loopback host, localhost, "
            "127.0.0.1, [::1] and the host itself; elsewhere any name, except "
            "that auth_mode=none there needs it set."
        ),
        json_schema_extra=_shown("loopback names on a loopback host, else any"),
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description=(
            "Web origins whose pages may call the API with the user's "
            'credentials (JSON list, e.g. ["https://dashboard.example.org"]): '
            "answered with CORS headers (preflight included), and allowed to "
            "open subscriptions. A browser request from any other origin is "
            "refused (HTTP 403; a websocket handshake too). Empty: the "
            "API's own origin only. No wildcard: every origin listed can "
            "act as its users."
        ),
    )
    secret_key: SecretStr | None = Field(
        None,
        description=(
            "Fernet keys (comma-separated; the first encrypts, all decrypt, so "
            "keys can rotate) that encrypt webhook secrets at rest. Unset: a "
            "key file secret.key (mode 0600) in data_dir, created on first use; "
            "set it when the API and workers do not share data_dir."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Least severe log level written."
    )
    log_format: Literal["console", "json"] = Field(
        "console", description="Human-readable lines or one JSON object per line."
    )

    jupyter: JupyterSettings = Field(
        default_factory=JupyterSettings, title="Jupyter and kernels"
    )
    hub: HubSettings = Field(default_factory=HubSettings, title="JupyterHub")
    limits: LimitSettings = Field(
        default_factory=LimitSettings, title="Submissions: limits and defaults"
    )
    outputs: OutputSettings = Field(default_factory=OutputSettings, title="Outputs")
    workers: WorkerSettings = Field(default_factory=WorkerSettings, title="Workers")
    graphql: GraphQLSettings = Field(
        default_factory=GraphQLSettings, title="GraphQL limits"
    )
    auth: AuthSettings = Field(default_factory=AuthSettings, title="Authentication")
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings, title="Webhooks")
    retention: RetentionSettings = Field(
        default_factory=RetentionSettings, title="Retention"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments first, then the flat ``NOTEBURST_*`` variables.

        No ``env_file`` or ``secrets_dir`` is configured, so the default
        dotenv and secrets sources would read nothing; they are left out.
        """
        return (init_settings, _FlatEnvSource(settings_cls))

    @model_validator(mode="before")
    @classmethod
    def _regroup_flat_keywords(cls, data: Any) -> Any:
        """Accept ``Config(warm_kernels={}, webhook_max_attempts=3)``.

        A flat keyword is moved into its group, over what the group was
        given otherwise (a nested keyword or the environment).
        """
        if not isinstance(data, dict):
            return data
        targets = _flat_targets()
        regrouped: dict[str, Any] = {}
        moved: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            group, name = targets.get(key, (None, key))
            if group is None:
                regrouped[key] = value
            else:
                moved.setdefault(group, {})[name] = value
        for group, values in moved.items():
            given = regrouped.get(group)
            if isinstance(given, BaseModel):
                # Only what was set, so model_fields_set stays meaningful.
                given = {name: getattr(given, name) for name in given.model_fields_set}
            regrouped[group] = {**(given or {}), **values}
        return regrouped

    @property
    def effective_public_url(self) -> str:
        """The public base URL, defaulting to the address ``serve`` binds."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @field_validator("allowed_hosts")
    @classmethod
    def _host_patterns(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            msg = "an empty list would refuse every request: leave it unset"
            raise ValueError(msg)
        return [host_pattern(entry) for entry in value]

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(web_origin(entry) for entry in value))

    @property
    def binds_loopback(self) -> bool:
        """Whether ``host`` is a loopback address (or ``localhost``)."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def effective_allowed_hosts(self) -> list[str]:
        """The names requests may be addressed to (see ``allowed_hosts``).

        DNS rebinding: a web page on a name its author controls can, once
        loaded, have that name resolve to 127.0.0.1 (or any address the
        browser reaches), and the browser then lets the page talk to what
        listens there as to its own origin, with no CORS or Origin check
        to stop it.  The only trace is the ``Host`` header, which carries
        the page's name.  Jupyter refuses such names for this reason.

        - ``allowed_hosts`` set: exactly that list (loopback names are not
          added, so a loopback server behind a local reverse proxy lists
          both, if local clients also connect directly).
        - Unset, on a loopback host: where the embedded default runs with
          no authentication and every caller may run code, so only names
          no DNS answer can change: ``localhost`` (browsers and the
          system's hosts file resolve it locally), ``127.0.0.1``,
          ``[::1]``, and the bound address if it is another loopback one.
          ``*.localhost`` is left out: major browsers keep it on loopback,
          but other resolvers may ask DNS, whose answer a hostile network
          chooses; nothing of Noteburst's needs it (list it to use it).
        - Unset, elsewhere: any name.  The names an ingress forwards, and
          the pod address a Kubernetes probe uses, are not known here, and
          a fixed list would break them; and off loopback callers
          authenticate (:func:`noteburst.app.check_config` refuses
          ``auth_mode=none`` there without this list), with credentials a
          rebound page does not have: a token is sent only by code that
          holds it, and an ingress sets the proxy headers only for its own
          names, whose cookies the browser does not send to the attacker's.
        """
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        if not self.binds_loopback:
            return ["*"]
        names = ["localhost", "127.0.0.1", "[::1]"]
        bound = host_pattern(self.host)
        return names if bound in names else [*names, bound]

    @property
    def is_embedded(self) -> bool:
        """Whether this process runs the in-process queue and worker."""
        return self.redis_url is None

    @property
    def effective_database_url(self) -> str:
        """The database URL, defaulting to SQLite in ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'noteburst.sqlite3'}"

    def environment(self) -> dict[str, str]:
        """Return the ``NOTEBURST_*`` variables that configure another process alike.

        Only the settings given explicitly (as keywords or variables), as
        strings the environment source reads back; secrets in clear.
        """
        env: dict[str, str] = {}
        for variable in variables():
            owner: BaseModel = (
                self if variable.group is None else getattr(self, variable.group)
            )
            if variable.field not in owner.model_fields_set:
                continue
            value = getattr(owner, variable.field)
            if value is None:
                continue
            env[variable.name] = _as_variable(value)
        return env


_HOST_NAME = re.compile(r"(\*\.)?[a-z0-9_-]+(\.[a-z0-9_-]+)*")


def host_pattern(entry: str) -> str:
    """Return an ``allowed_hosts`` entry as the Host check compares it.

    Lowercase, an IPv6 address in brackets (as the ``Host`` header has
    it), in its compressed form (as browsers write it).

    Raises
    ------
    ValueError
        Raised if the entry is not a host name, ``*.`` and a domain, an IP
        address or ``*`` (a scheme or a port is a mistake: the check
        compares names only).
    """
    pattern = entry.strip().lower()
    if pattern == "*":
        return pattern
    bracketed = pattern.startswith("[") and pattern.endswith("]")
    with contextlib.suppress(ValueError):
        return f"[{ipaddress.IPv6Address(pattern[1:-1] if bracketed else pattern)}]"
    if _HOST_NAME.fullmatch(pattern):
        return pattern
    msg = (
        f"{entry!r} is not a host name, *.domain, IP address or *: give "
        "names without scheme or port"
    )
    raise ValueError(msg)


_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def web_origin(entry: str) -> str:
    """Return a ``cors_origins`` entry as browsers send it in ``Origin``.

    ``scheme://host[:port]``: lowercase, the default port left out, an IPv6
    address in brackets.

    Raises
    ------
    ValueError
        Raised for anything but an http(s) origin: ``*`` (every site could
        act as the users), a path, a query or credentials (an origin has
        none, and a browser never sends them, so the entry would match
        nothing).
    """
    parts = urlsplit(entry.strip())
    try:
        port = parts.port
    except ValueError as exc:
        msg = f"{entry!r} has an invalid port"
        raise ValueError(msg) from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        msg = (
            f"{entry!r} is not an origin like https://app.example.org (and "
            "a wildcard is not allowed: list each origin)"
        )
        raise ValueError(msg)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        msg = f"{entry!r} is more than an origin: give scheme://host[:port] only"
        raise ValueError(msg)
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{ipaddress.IPv6Address(host)}]"
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


class Variable(NamedTuple):
    """One ``NOTEBURST_*`` variable and the field it sets."""

    name: str
    """The variable, e.g. ``NOTEBURST_WEBHOOK_MAX_ATTEMPTS``."""
    group: str | None
    """The field of :class:`Config` holding the group (None: Config's own)."""
    field: str
    """The field's name (in the group, if any)."""
    info: FieldInfo

    @property
    def path(self) -> str:
        """Where the value lands, e.g. ``webhooks.max_attempts``."""
        return self.field if self.group is None else f"{self.group}.{self.field}"

    @property
    def flat_name(self) -> str:
        """The keyword ``Config`` accepts for it, e.g. ``webhook_max_attempts``."""
        return self.name.removeprefix(ENV_PREFIX).lower()


def _group_model(info: FieldInfo) -> type[_Group] | None:
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, _Group):
        return annotation
    return None


def _flat_name(name: str, info: FieldInfo) -> str:
    alias = info.validation_alias
    return alias if isinstance(alias, str) else name


@cache
def variables() -> tuple[Variable, ...]:
    """Every ``NOTEBURST_*`` variable, in the order the docs list them."""
    found: list[Variable] = []
    groups: list[Variable] = []
    for name, info in Config.model_fields.items():
        model = _group_model(info)
        if model is None:
            found.append(Variable(ENV_PREFIX + name.upper(), None, name, info))
            continue
        groups.extend(
            Variable(
                ENV_PREFIX + _flat_name(field, field_info).upper(),
                name,
                field,
                field_info,
            )
            for field, field_info in model.model_fields.items()
        )
    return (*found, *groups)


@cache
def _flat_targets() -> dict[str, tuple[str | None, str]]:
    return {v.flat_name: (v.group, v.field) for v in variables()}


class _FlatEnvSource(EnvSettingsSource):
    """Reads each field, grouped or not, from its flat ``NOTEBURST_*`` variable.

    Needed because pydantic-settings maps nested models only onto
    delimited variables (``NOTEBURST_WEBHOOKS__MAX_ATTEMPTS``) or a JSON
    object per group, and every existing variable name must keep working.
    The reading itself is pydantic-settings': the environment as it loads
    it (case-insensitive), and its decoding of JSON lists and objects.
    """

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for variable in variables():
            raw = self.env_vars.get(self._apply_case_sensitive(variable.name))
            try:
                value = self.prepare_field_value(
                    variable.field, variable.info, raw, value_is_complex=False
                )
            except ValueError as exc:
                msg = (
                    f'error parsing value for field "{variable.path}" from '
                    f'source "{type(self).__name__}"'
                )
                raise SettingsError(msg) from exc
            if value is None:
                continue
            if variable.group is None:
                data[variable.field] = value
            else:
                data.setdefault(variable.group, {})[variable.field] = value
        return data


def _as_variable(value: object) -> str:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, str | Path):
        return str(value)
    return json.dumps(to_jsonable_python(value))


def _shown_default(info: FieldInfo) -> str:
    extra = info.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("doc_default"), str):
        return str(extra["doc_default"])
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, bool | list | dict):
        return json.dumps(value)
    return str(value)


def _table(rows: list[Variable]) -> list[str]:
    lines = ["| variable | meaning | default |", "| --- | --- | --- |"]
    for variable in rows:
        meaning = (variable.info.description or "").replace("|", "\\|")
        lines.append(
            f"| `{variable.name}` | {meaning} | `{_shown_default(variable.info)}` |"
        )
    return lines


def render_variables() -> str:
    """Return the variables tables of docs/configuration.md, one per group."""
    lines = [DOCS_BEGIN, "", f"### {Config.DOCS_TITLE}", "", Config.DOCS_INTRO, ""]
    everything = variables()
    lines += _table([v for v in everything if v.group is None])
    for name, info in Config.model_fields.items():
        model = _group_model(info)
        if model is None:
            continue
        intro = " ".join((model.__doc__ or "").split())
        lines += ["", f"### {info.title} (`config.{name}`)", "", intro, ""]
        lines += _table([v for v in everything if v.group == name])
    lines += ["", DOCS_END]
    return "\n".join(lines)


def render_configuration_docs(page: str) -> str:
    """Return ``page`` with its generated tables replaced by current ones.

    Raises
    ------
    ValueError
        Raised if the page lacks the markers around the tables.
    """
    before, begin, rest = page.partition(DOCS_BEGIN)
    _, end, after = rest.partition(DOCS_END)
    if not begin or not end:
        msg = "the page has no generated tables' markers"
        raise ValueError(msg)
    return before + render_variables() + after


def main(argv: list[str] | None = None) -> None:
    """Regenerate the tables of the page given (default docs/configuration.md)."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "docs/configuration.md")
    page = path.read_text(encoding="utf-8")
    path.write_text(render_configuration_docs(page), encoding="utf-8")


if __name__ == "__main__":
    main()
