"""Configuration, read once at start from ``NOTEBURST_*`` environment variables.

With nothing set, Noteburst runs the embedded default: SQLite in
``data_dir``, an in-process queue and a Jupyter server it starts itself.
Setting ``NOTEBURST_DATABASE_URL`` and ``NOTEBURST_REDIS_URL`` turns the same
code into the Postgres/Redis service.  Every field is documented in
docs/configuration.md; a test keeps that page in step with this class.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .constants import (
    ADMIN_SCOPE,
    DEFAULT_KERNEL_NAME,
    DEFAULT_MAX_NOTEBOOK_BYTES,
    DEFAULT_TIMEOUT_SECONDS,
    USER_SCOPE,
)

__all__ = ["Config"]


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "noteburst"


class Config(BaseSettings):
    """Noteburst's settings."""

    model_config = SettingsConfigDict(
        env_prefix="NOTEBURST_", extra="ignore", frozen=True
    )

    database_url: str | None = Field(
        None,
        description=(
            "SQLAlchemy URL of the database, e.g. "
            "postgresql+asyncpg://user@host/db. Unset: SQLite in data_dir."
        ),
    )
    redis_url: str | None = Field(
        None,
        description=(
            "Redis URL for the Dramatiq broker, e.g. redis://host:6379/0. "
            "Unset: an in-process broker and worker (embedded default)."
        ),
    )
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description=(
            "Folder for the embedded SQLite database and the local Jupyter "
            "server's working directory."
        ),
    )
    host: str = Field("127.0.0.1", description="Address `serve` binds.")
    port: int = Field(8000, description="Port `serve` binds.")

    jupyter_url: str | None = Field(
        None,
        description=(
            "Base URL of a running jupyter_server to execute on. Unset: "
            "Noteburst starts a local one on a free loopback port."
        ),
    )
    jupyter_token: SecretStr | None = Field(
        None, description="Token for jupyter_url (sent as a header)."
    )
    jupyter_start_timeout: float = Field(
        60.0, gt=0, description="Seconds to wait for the local server to start."
    )
    lab_backend: Literal["local", "jupyterhub"] = Field(
        "local",
        description=(
            "Where kernels run: `local` (a jupyter_server Noteburst starts, or "
            "jupyter_url) or `jupyterhub` (labs spawned for bot users)."
        ),
    )
    hub_url: str | None = Field(
        None,
        description=(
            "JupyterHub's public URL (the proxy), e.g. http://hub.example/. "
            "Required with lab_backend=jupyterhub."
        ),
    )
    hub_token: SecretStr | None = Field(
        None,
        description=(
            "JupyterHub service token with scopes admin:users, admin:servers, "
            "access:servers (sent as a header, never logged)."
        ),
    )
    hub_identities: list[str] = Field(
        default_factory=lambda: [f"noteburst-bot-{i:02d}" for i in range(1, 9)],
        description=(
            "Bot users workers drive labs as (JSON list); each worker process "
            "leases one. Needs at least as many names as worker processes."
        ),
    )
    spawn_timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for JupyterHub to start a lab."
    )
    hub_user_options: dict[str, Any] | None = Field(
        None,
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
    warm_up_code: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "Code run in each pooled kernel before it is handed out, per "
            'kernel name (JSON object, e.g. {"python3": "import numpy"}).'
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

    graphql_max_depth: int = Field(
        12,
        ge=1,
        description=(
            "Deepest selection a GraphQL operation may have (introspection "
            "not counted)."
        ),
    )
    graphql_max_aliases: int = Field(
        30, ge=0, description="Most aliases one GraphQL operation may use."
    )
    graphql_max_tokens: int = Field(
        20_000,
        ge=100,
        description=(
            "Most tokens a GraphQL document may have; pass notebooks as "
            "variables, which do not count."
        ),
    )

    worker_threads: int = Field(
        4, ge=1, description="Executions one worker process runs at once."
    )
    worker_lease_seconds: float = Field(
        30.0,
        gt=0,
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
    output_flush_seconds: float = Field(
        0.2,
        gt=0,
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
    output_flush_bytes: int = Field(
        65536,
        ge=1,
        description=(
            "Outputs gathered for CELL_OUTPUTS events are written as soon as "
            "they reach this many bytes, without waiting for output_flush_seconds."
        ),
    )
    output_max_resent_bytes: int = Field(
        8 << 20,
        ge=0,
        description=(
            "Bytes of outputs that CELL_OUTPUTS events written while a cell runs "
            "may send again (a clear_output animation, a display updated in a "
            "loop), per attempt; past it such changes are written only at the "
            "end of each cell, so a long animation cannot fill the events table."
        ),
    )
    redis_namespace: str = Field(
        "noteburst", description="Prefix of the Dramatiq keys in Redis."
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

    auth_mode: Literal["none", "tokens", "proxy"] = Field(
        "none",
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
            "reach it is an administrator)."
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
    proxy_scopes_header: str | None = Field(
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
    max_queued_per_user: int | None = Field(
        200,
        ge=0,
        description=(
            "Most queued executions one user may have (sharing a run counts); "
            "a submission past it is refused with LimitExceeded. Unset: no limit."
        ),
    )
    max_running_per_user: int | None = Field(
        50,
        ge=0,
        description=(
            "A user with this many running executions has further submissions "
            "refused with LimitExceeded until some finish. Unset: no limit."
        ),
    )
    max_submissions_per_minute: int | None = Field(
        600,
        ge=0,
        description=(
            "Most submissions one user may make in any 60 seconds (cache hits "
            "count). Unset: no limit."
        ),
    )
    public_url: str | None = Field(
        None,
        description=(
            "Base URL clients reach this service at, e.g. https://noteburst.example; "
            "webhook messages link to the result under it. Unset: "
            "http://host:port."
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
    webhook_allowed_networks: list[str] = Field(
        default_factory=list,
        description=(
            'Addresses or CIDR networks (JSON list, e.g. ["10.1.0.0/16"]) '
            "webhooks may reach although they are loopback, private, link-local "
            "or otherwise not public; everything else of that kind is refused."
        ),
    )
    webhook_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description=(
            "Bound on one delivery attempt: resolving the name, connecting and "
            "the receiver's response headers."
        ),
    )
    webhook_resolve_timeout_seconds: float = Field(
        5.0,
        gt=0,
        description="Bound on resolving a webhook's host name (at submission too).",
    )
    webhook_max_attempts: int = Field(
        15, ge=1, description="Most delivery attempts of one webhook."
    )
    webhook_horizon_seconds: float = Field(
        86400.0,
        gt=0,
        description=(
            "No attempt is scheduled later than this many seconds after the "
            "execution ended; the webhook is then given up (FAILED)."
        ),
    )
    webhook_initial_backoff_seconds: float = Field(
        5.0,
        gt=0,
        description=(
            "Wait after the first failed attempt; it doubles after each one "
            "(with jitter: between half and all of it)."
        ),
    )
    webhook_max_backoff_seconds: float = Field(
        3600.0, gt=0, description="Longest wait between two delivery attempts."
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Least severe log level written."
    )
    log_format: Literal["console", "json"] = Field(
        "console", description="Human-readable lines or one JSON object per line."
    )

    @field_validator(
        "database_url",
        "redis_url",
        "jupyter_url",
        "proxy_scopes_header",
        "max_queued_per_user",
        "max_running_per_user",
        "max_submissions_per_minute",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("webhook_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            # strict: host bits set (10.0.0.1/8) is a typo, not a network.
            ipaddress.ip_network(entry.strip(), strict=True)
        return value

    @property
    def effective_public_url(self) -> str:
        """The public base URL, defaulting to the address ``serve`` binds."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

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
