"""The Helm chart's logic: values in, manifests out (deploy/helm/noteburst).

Each test renders the chart with ``helm template`` (the pinned binary that
scripts/helm extracts from node_modules) and reads the manifests as YAML.
No cluster is involved: what is checked is what the chart asks Kubernetes
and Helm to do.  Without the helm binary these tests fail, they do not
skip: the chart would go unchecked.

The settings the chart passes are checked against Noteburst's own
configuration: every ``NOTEBURST_*`` name must be a real setting, and the
rendered environment must build a ``Config`` that ``check_config`` accepts,
as the processes in the pods will.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from noteburst.app import check_config
from noteburst.config import Config, variables
from noteburst.worker.runtime import boot_timeout

REPO = Path(__file__).resolve().parents[2]
HELM = REPO / "scripts" / "helm"
CHART = REPO / "deploy" / "helm" / "noteburst"
PRODUCTION = CHART / "ci" / "production-values.yaml"
INLINE_SECRETS = CHART / "ci" / "inline-secrets-values.yaml"
HELM_TIMEOUT = 120
"""Seconds one helm call may take (the first one extracts the binary)."""

SECRET_SETTINGS = frozenset(
    {
        "NOTEBURST_DATABASE_URL",
        "NOTEBURST_REDIS_URL",
        "NOTEBURST_SECRET_KEY",
        "NOTEBURST_HUB_TOKEN",
        "NOTEBURST_JUPYTER_TOKEN",
    }
)

PLACEHOLDER_SECRETS = {
    "NOTEBURST_DATABASE_URL": "postgresql+asyncpg://noteburst:pw@postgres/noteburst",
    "NOTEBURST_REDIS_URL": "redis://:pw@redis:6379/0",
    "NOTEBURST_SECRET_KEY": "k",
    "NOTEBURST_HUB_TOKEN": "t",
    "NOTEBURST_JUPYTER_TOKEN": "j",
}
"""Stand-ins for what an existing Secret would hold."""

Manifest = dict[str, Any]


class HelmError(Exception):
    """``helm template`` refused the values (its message is the error)."""


def _run_helm(*args: str | Path) -> str:
    result = subprocess.run(
        [str(HELM), *(str(arg) for arg in args)],
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise HelmError(result.stderr.strip() or result.stdout.strip())
    return result.stdout


@cache
def _render_text(files: tuple[Path, ...], overrides: str) -> str:
    args: list[str | Path] = ["template", "noteburst", CHART, "--namespace", "nb"]
    for path in files:
        args += ["--values", path]
    if overrides:
        # --set-json keeps types (numbers, lists) as a values file would.
        for key, value in json.loads(overrides).items():
            args += ["--set-json", f"{key}={json.dumps(value)}"]
    return _run_helm(*args)


def render(*files: Path, **overrides: Any) -> list[Manifest]:
    """Render the chart with these values files, then ``--set-json`` overrides.

    Overrides are given with ``__`` for ``.`` (``worker__replicas=3``).
    """
    encoded = json.dumps(
        {key.replace("__", "."): value for key, value in sorted(overrides.items())}
    )
    text = _render_text(files, encoded)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def refused(*files: Path, **overrides: Any) -> str:
    """Return the chart's error for values it must refuse (its ``fail``)."""
    with pytest.raises(HelmError) as caught:
        render(*files, **overrides)
    message = str(caught.value)
    # Not helm missing, or failing for another reason.
    assert "execution error at" in message, message
    return message


def one(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    """The one manifest of this kind named ``noteburst-NAME`` (or ``noteburst``)."""
    full = f"noteburst-{name}" if name else "noteburst"
    found = [
        m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == full
    ]
    assert len(found) == 1, f"{kind} {full}: {len(found)} found"
    return found[0]


def kinds(manifests: list[Manifest]) -> set[str]:
    return {m["kind"] for m in manifests}


def workloads(manifests: list[Manifest]) -> Iterator[Manifest]:
    """The Deployments and Jobs (everything that runs a pod)."""
    return (m for m in manifests if m["kind"] in {"Deployment", "Job"})


def containers(workload: Manifest) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    return result


def config_map(manifests: list[Manifest], name: str = "") -> dict[str, str]:
    data: dict[str, str] = one(manifests, "ConfigMap", name)["data"]
    return data


def hook(manifest: Manifest) -> tuple[set[str], int, set[str]]:
    """Return a hook's events, weight and delete policies."""
    annotations = manifest["metadata"].get("annotations") or {}
    events = set(annotations.get("helm.sh/hook", "").split(",")) - {""}
    weight = int(annotations.get("helm.sh/hook-weight", "0"))
    policies = set(annotations.get("helm.sh/hook-delete-policy", "").split(","))
    return events, weight, policies - {""}


def pod_environment(manifests: list[Manifest], workload: Manifest) -> dict[str, str]:
    """The NOTEBURST_* environment the workload's container starts with.

    ConfigMap references are resolved from the rendered manifests; Secret
    references from a rendered Secret, or else (an existing Secret) from
    placeholders.
    """
    container = containers(workload)[0]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source
        env.update(config_map_named(manifests, source["configMapRef"]["name"]))
    for variable in container.get("env", []):
        name = variable["name"]
        if "value" in variable:
            env[name] = variable["value"]
            continue
        ref = variable["valueFrom"]["secretKeyRef"]
        secret = secret_data(manifests, ref["name"])
        if secret is None:
            env[name] = PLACEHOLDER_SECRETS[name]
        elif ref["key"] in secret:
            env[name] = secret[ref["key"]]
        else:
            assert ref.get("optional"), f"{name}: key {ref['key']} missing"
    return {k: v for k, v in env.items() if k.startswith("NOTEBURST_")}


def config_map_named(manifests: list[Manifest], name: str) -> dict[str, str]:
    for m in manifests:
        if m["kind"] == "ConfigMap" and m["metadata"]["name"] == name:
            data: dict[str, str] = m["data"]
            return data
    raise AssertionError(f"no ConfigMap {name} rendered")


def secret_data(manifests: list[Manifest], name: str) -> dict[str, str] | None:
    """A rendered Secret's decoded data; None if the chart does not render it."""
    for m in manifests:
        if m["kind"] == "Secret" and m["metadata"]["name"] == name:
            return {
                k: base64.b64decode(v).decode()
                for k, v in (m.get("data") or {}).items()
            }
    return None


def build_config(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Config:
    """The Config a pod with this environment builds, as its process would."""
    with monkeypatch.context() as patch:
        for name in [n for n in os.environ if n.startswith("NOTEBURST_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        return Config()


RENDERINGS: dict[str, tuple[Path, ...]] = {
    "default": (),
    "production": (PRODUCTION,),
    "inline-secrets": (INLINE_SECRETS,),
    "production+inline-secrets": (PRODUCTION, INLINE_SECRETS),
}


@pytest.fixture(params=sorted(RENDERINGS))
def rendering(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(*RENDERINGS[request.param])


# -- secrets --------------------------------------------------------------


@pytest.mark.parametrize(
    "files",
    [(INLINE_SECRETS,), (PRODUCTION, INLINE_SECRETS)],
    ids=["inline-secrets", "production+inline-secrets"],
)
def test_secret_values_appear_only_in_secrets(files: tuple[Path, ...]) -> None:
    manifests = render(*files)
    values = yaml.safe_load(INLINE_SECRETS.read_text())["secrets"]["values"]
    keys = yaml.safe_load((CHART / "values.yaml").read_text())["secrets"]["keys"]
    for path in files:
        keys.update(yaml.safe_load(path.read_text()).get("secrets", {}).get("keys", {}))
    secrets = [v for v in values.values() if v]
    # The parts a leak would show even if the URL were reformatted.
    secrets += ["pg-placeholder-password", "redis-placeholder-password"]
    for m in manifests:
        text = yaml.safe_dump(m)
        if m["kind"] == "Secret":
            assert "stringData" not in m
            continue
        for secret in secrets:
            assert secret not in text, f"{m['kind']} {m['metadata']['name']}"
    # And the Secret holds them under the keys the pods read.
    assert secret_data(manifests, "noteburst") == {
        keys[name]: values[name]
        for name in ("databaseUrl", "redisUrl", "secretKey", "hubToken")
    }


def test_secret_settings_come_only_from_secret_key_refs(
    rendering: list[Manifest],
) -> None:
    for m in rendering:
        if m["kind"] == "ConfigMap":
            assert not SECRET_SETTINGS & set(m["data"]), m["metadata"]["name"]
    for workload in workloads(rendering):
        for container in containers(workload):
            for source in container.get("envFrom", []):
                assert set(source) == {"configMapRef"}, source
            names = [v["name"] for v in container["env"]]
            assert len(names) == len(set(names)), names
            for variable in container["env"]:
                if variable["name"] in SECRET_SETTINGS:
                    assert "value" not in variable, variable["name"]
                    assert set(variable["valueFrom"]) == {"secretKeyRef"}
            refs = {v["name"] for v in container["env"] if "valueFrom" in v}
            assert {
                "NOTEBURST_DATABASE_URL",
                "NOTEBURST_REDIS_URL",
                "NOTEBURST_SECRET_KEY",
                "NOTEBURST_HUB_TOKEN",
            } <= refs, workload["metadata"]["name"]


def test_existing_secret_is_referenced_not_rendered() -> None:
    manifests = render(PRODUCTION)
    assert "Secret" not in kinds(manifests)
    api = one(manifests, "Deployment", "api")
    refs = {
        v["name"]: v["valueFrom"]["secretKeyRef"]
        for v in containers(api)[0]["env"]
        if "valueFrom" in v
    }
    assert refs["NOTEBURST_DATABASE_URL"] == {
        "name": "noteburst-secrets",
        "key": "database-url",
    }
    assert refs["NOTEBURST_JUPYTER_TOKEN"]["optional"] is True
    assert "optional" not in refs["NOTEBURST_HUB_TOKEN"]


def test_missing_inline_secrets_are_refused() -> None:
    assert "secrets.values.databaseUrl" in refused(secrets__existingSecret="")
    message = refused(
        INLINE_SECRETS,
        secrets__values__hubToken="",
        config__jupyter__labBackend="jupyterhub",
    )
    assert "hubToken" in message


def test_extra_env_refuses_secret_and_chart_managed_names() -> None:
    assert "secret setting" in refused(config__extraEnv={"NOTEBURST_HUB_TOKEN": "x"})
    assert "set by the chart" in refused(
        config__extraEnv={"NOTEBURST_WORKER_THREADS": 2}
    )
    assert "only NOTEBURST_" in refused(config__extraEnv={"HOME": "/x"})


# -- the migration hook ---------------------------------------------------


@pytest.mark.parametrize("files", [(), (INLINE_SECRETS,)], ids=["existing", "inline"])
def test_migration_job_is_a_hook_ordered_after_its_configuration(
    files: tuple[Path, ...],
) -> None:
    manifests = render(*files)
    job = one(manifests, "Job", "migrations")
    events, job_weight, policies = hook(job)
    assert events == {"pre-install", "pre-upgrade"}
    # Replaced on the next run; a failed Job stays for its logs.
    assert "before-hook-creation" in policies
    assert "hook-failed" not in policies
    container = containers(job)[0]
    assert container["args"] == ["db", "upgrade"]

    # The ConfigMap it reads is a hook of the same events that Helm creates
    # first (lower weight), holding the same settings as the Deployments'.
    (source,) = container["envFrom"]
    cm_name = source["configMapRef"]["name"]
    hook_cm = next(
        m
        for m in manifests
        if m["kind"] == "ConfigMap" and m["metadata"]["name"] == cm_name
    )
    cm_events, cm_weight, cm_policies = hook(hook_cm)
    assert cm_events == events
    assert cm_weight < job_weight
    assert "before-hook-creation" in cm_policies
    assert hook_cm["data"] == config_map(manifests)

    # Its secrets: the existing Secret (there before the install), or a
    # hook copy of the chart's Secret created before the Job.
    names = {
        v["valueFrom"]["secretKeyRef"]["name"]
        for v in container["env"]
        if "valueFrom" in v
    }
    assert len(names) == 1
    (secret_name,) = names
    hook_secret = [
        m
        for m in manifests
        if m["kind"] == "Secret" and m["metadata"]["name"] == secret_name
    ]
    if not files:
        assert secret_name == "noteburst"
        assert not hook_secret
    else:
        (copy,) = hook_secret
        secret_events, secret_weight, _ = hook(copy)
        assert secret_events == events
        assert secret_weight < job_weight
        assert copy["data"] == one(manifests, "Secret", "")["data"]

    # Pre-install hooks run before the chart's ordinary resources exist:
    # the Job must not need the chart's ServiceAccount.
    pod = job["spec"]["template"]["spec"]
    assert pod.get("serviceAccountName") in {None, "default"}
    assert pod["restartPolicy"] == "Never"

    # The Deployments are ordinary resources, applied once the pre-install
    # and pre-upgrade hooks have succeeded: they roll after the migration.
    for kind in ("Deployment", "ConfigMap", "Secret"):
        for m in manifests:
            if m["kind"] == kind and not m["metadata"]["name"].endswith("migrations"):
                assert hook(m)[0] == set(), m["metadata"]["name"]


def test_migrations_can_be_turned_off() -> None:
    manifests = render(INLINE_SECRETS, migrations__enabled=False)
    assert "Job" not in kinds(manifests)
    assert not [m for m in manifests if hook(m)[0]]


# -- the workers' identities, replicas and shutdown -----------------------


@pytest.mark.parametrize("name", ["default", "production"])
def test_worker_identities_reach_the_config_as_listed(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = RENDERINGS[name]
    values = yaml.safe_load((files[0] if files else CHART / "values.yaml").read_text())
    listed = values["config"]["hub"]["identities"]
    manifests = render(*files)
    worker = one(manifests, "Deployment", "worker")
    config = build_config(pod_environment(manifests, worker), monkeypatch)
    assert config.jupyter.lab_backend == "jupyterhub"
    assert config.hub.identities == listed


@pytest.mark.parametrize(
    ("replicas", "surge", "identities", "ok"),
    [
        (2, 1, 3, True),
        (2, 1, 2, False),  # the surge pod would wait for an identity forever
        (3, 0, 3, True),
        (4, "50%", 6, True),
        (4, "50%", 5, False),
    ],
)
def test_worker_replicas_are_bounded_by_the_identities(
    replicas: int, surge: int | str, identities: int, ok: bool
) -> None:
    overrides: dict[str, Any] = {
        "worker__replicas": replicas,
        "worker__strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": surge, "maxUnavailable": 0 if surge else 1},
        },
        "config__hub__identities": [f"bot-{i}" for i in range(identities)],
    }
    if ok:
        worker = one(render(**overrides), "Deployment", "worker")
        assert worker["spec"]["replicas"] == replicas
    else:
        assert "bot users but up to" in refused(**overrides)


def test_percentage_surge_rounds_up() -> None:
    identities = [f"bot-{i}" for i in range(6)]
    strategy = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
    }
    # 25% of 5 is 1.25: Kubernetes surges 2 pods, so 7 identities are needed.
    assert "up to 7 worker pods" in refused(
        worker__replicas=5,
        worker__strategy=strategy,
        config__hub__identities=identities,
    )


def test_worker_autoscaler_maximum_is_bounded_by_the_identities() -> None:
    # production: maxReplicas 4 + surge 1 <= 7 identities
    worker = one(render(PRODUCTION), "Deployment", "worker")
    assert "replicas" not in worker["spec"]
    message = refused(PRODUCTION, worker__autoscaling__maxReplicas=7)
    assert "worker.autoscaling.maxReplicas" in message
    assert "up to 8 worker pods" in message


def test_duplicate_identities_are_refused() -> None:
    assert "twice" in refused(config__hub__identities=["a", "b", "a", "c"])


@pytest.mark.parametrize("grace", [25, 120, 7.5, 0])
def test_worker_termination_grace_exceeds_its_shutdown_grace(grace: float) -> None:
    manifests = render(config__workers__shutdownGraceSeconds=grace)
    worker = one(manifests, "Deployment", "worker")
    configured = float(config_map(manifests)["NOTEBURST_WORKER_SHUTDOWN_GRACE_SECONDS"])
    assert configured == grace
    period = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert isinstance(period, int)
    assert period > configured
    assert period == math.ceil(grace) + 15


# -- probes, ports and the pods' security ---------------------------------


def _probe(container: dict[str, Any], kind: str) -> tuple[str, str]:
    get = container[kind]["httpGet"]
    return get["path"], get["port"]


def test_probes_point_at_health_and_readiness(
    rendering: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("api", "worker"):
        deployment = one(rendering, "Deployment", name)
        (container,) = containers(deployment)
        assert _probe(container, "livenessProbe") == ("/healthz", "http")
        assert _probe(container, "readinessProbe") == ("/readyz", "http")
        assert _probe(container, "startupProbe") == ("/healthz", "http")
        (port,) = container["ports"]
        assert port["name"] == "http"
        env = pod_environment(rendering, deployment)
        config = build_config(env, monkeypatch)
        if name == "api":
            assert container["args"][0] == "serve"
            assert "--without-worker" in container["args"]
            assert port["containerPort"] == config.port
            assert config.host == "0.0.0.0"
        else:
            assert container["args"] == ["worker"]
            assert port["containerPort"] == int(env["NOTEBURST_WORKER_HTTP_PORT"])
            # The startup probe waits as long as Noteburst lets a worker's
            # start take (an identity, then the lab's spawn).
            startup = container["startupProbe"]
            allowed = startup["periodSeconds"] * startup["failureThreshold"]
            assert allowed >= boot_timeout(config)


def test_probes_send_an_allowed_host_when_hosts_are_restricted() -> None:
    manifests = render(config__allowedHosts=["*.example.org", "noteburst.example.org"])
    api = one(manifests, "Deployment", "api")
    headers = containers(api)[0]["readinessProbe"]["httpGet"]["httpHeaders"]
    assert headers == [{"name": "Host", "value": "probe.example.org"}]


def test_pods_are_non_root_with_a_read_only_root(rendering: list[Manifest]) -> None:
    for workload in workloads(rendering):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False, name
        # Service links would put NOTEBURST_PORT=tcp://... (and the like) in
        # the environment of any pod in a namespace with a Service named
        # `noteburst`: Config would read it as the port setting.
        assert pod["enableServiceLinks"] is False, name
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        data_dir = config_map_named(
            rendering, containers(workload)[0]["envFrom"][0]["configMapRef"]["name"]
        )["NOTEBURST_DATA_DIR"]
        for container in containers(workload):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            # Everything the process writes goes to emptyDirs.
            assert mounts["/tmp"] in empty_dirs, name
            assert mounts[data_dir] in empty_dirs, name


def test_changed_settings_roll_the_pods() -> None:
    def checksum(**overrides: Any) -> str:
        api = one(render(**overrides), "Deployment", "api")
        value: str = api["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        return value

    assert checksum() != checksum(config__logLevel="DEBUG")


# -- optional objects -----------------------------------------------------

OPTIONAL = {
    "ingress__enabled": {"Ingress"},
    "api__autoscaling__enabled": {"HorizontalPodAutoscaler"},
    "worker__autoscaling__enabled": {"HorizontalPodAutoscaler"},
    "networkPolicy__enabled": {"NetworkPolicy"},
    "serviceMonitor__enabled": {"ServiceMonitor"},
}


def test_optional_objects_are_off_by_default() -> None:
    manifests = render()
    assert not kinds(manifests) & set().union(*OPTIONAL.values())
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Job"} <= (
        kinds(manifests)
    )
    for name in ("api", "worker"):
        assert one(manifests, "Deployment", name)["spec"]["replicas"] == 2


@pytest.mark.parametrize("switch", sorted(OPTIONAL))
def test_each_optional_object_appears_only_when_enabled(switch: str) -> None:
    baseline = kinds(render())
    manifests = render(**{switch: True})
    assert kinds(manifests) - baseline == OPTIONAL[switch]
    if "autoscaling" in switch:
        component = switch.split("__", maxsplit=1)[0]
        (hpa,) = [m for m in manifests if m["kind"] == "HorizontalPodAutoscaler"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"noteburst-{component}"
        assert "replicas" not in one(manifests, "Deployment", component)["spec"]


def test_production_values_enable_every_optional_object() -> None:
    manifests = render(PRODUCTION)
    assert set().union(*OPTIONAL.values()) <= kinds(manifests)
    hpas = {
        m["metadata"]["name"]
        for m in manifests
        if m["kind"] == "HorizontalPodAutoscaler"
    }
    assert hpas == {"noteburst-api", "noteburst-worker"}
    monitor = one(manifests, "ServiceMonitor", "")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    # Both Services expose the port the ServiceMonitor scrapes.
    for name in ("api", "worker"):
        service = one(manifests, "Service", name)
        assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
        labels = service["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_disruption_budgets_follow_their_switches() -> None:
    manifests = render(worker__podDisruptionBudget__enabled=False)
    budgets = [m for m in manifests if m["kind"] == "PodDisruptionBudget"]
    assert [b["metadata"]["name"] for b in budgets] == ["noteburst-api"]
    assert budgets[0]["spec"]["maxUnavailable"] == 1


# -- the ingress and the proxy authentication -----------------------------


def test_auth_proxy_ingress_passes_the_header_noteburst_trusts() -> None:
    manifests = render(PRODUCTION)
    data = config_map(manifests)
    assert data["NOTEBURST_AUTH_MODE"] == "proxy"
    annotations = one(manifests, "Ingress", "")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"].startswith("http")
    passed = annotations["nginx.ingress.kubernetes.io/auth-response-headers"].split(",")
    assert data["NOTEBURST_PROXY_USER_HEADER"] in passed
    # Requests up to the API's own limit get through: twice the notebook
    # limit plus 1 MiB (docs/configuration.md).
    body = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert body.endswith("m")
    assert (
        int(body[:-1]) * 2**20 >= 2 * int(data["NOTEBURST_MAX_NOTEBOOK_BYTES"]) + 2**20
    )


def test_the_ingress_routes_the_api_but_not_the_operator_endpoints() -> None:
    ingress = one(render(PRODUCTION), "Ingress", "")
    [rule] = ingress["spec"]["rules"]
    paths = [path["path"] for path in rule["http"]["paths"]]
    assert paths == [
        "/graphql",
        "/graphiql-static",
        "/noteburst",
        "/executions",
        "/live-static",
    ]
    # /metrics and /readyz answer without credentials: only inside the cluster.
    for path in ("/", "/metrics", "/readyz", "/healthz"):
        assert path not in paths


def test_proxy_mode_without_an_authenticating_ingress_is_refused() -> None:
    message = refused(PRODUCTION, ingress__authProxy__enabled=False)
    assert "ingress.authProxy" in message
    assert "trustedProxies" in refused(
        config__auth__mode="proxy", config__auth__trustedProxies=[]
    )
    assert "tokens or proxy" in refused(config__auth__mode="none")


# -- the settings are Noteburst's -----------------------------------------


def test_every_variable_set_is_a_noteburst_setting(
    rendering: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    known = {variable.name for variable in variables()}
    by_name = {variable.name: variable for variable in variables()}
    for workload in workloads(rendering):
        env = pod_environment(rendering, workload)
        assert env, workload["metadata"]["name"]
        unknown = set(env) - known
        assert not unknown, f"{workload['metadata']['name']}: {sorted(unknown)}"
        config = build_config(env, monkeypatch)
        # Each one is read (Config ignores names it does not know, so this
        # is what proves a name right) ...
        for name in set(env) & known:
            variable = by_name[name]
            owner = (
                config if variable.group is None else getattr(config, variable.group)
            )
            assert variable.field in owner.model_fields_set, name
        # ... and the process would start with them.
        check_config(config)


def test_large_integers_stay_integers(monkeypatch: pytest.MonkeyPatch) -> None:
    manifests = render(config__limits__maxNotebookBytes=33554432)
    data = config_map(manifests)
    assert data["NOTEBURST_MAX_NOTEBOOK_BYTES"] == "33554432"
    api = one(manifests, "Deployment", "api")
    config = build_config(pod_environment(manifests, api), monkeypatch)
    assert config.limits.max_notebook_bytes == 33554432


# -- documentation --------------------------------------------------------

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):")


def documented_values(text: str) -> tuple[list[str], list[str]]:
    """Return the keys documented by a ``# --`` comment, and the undocumented.

    A documented key covers its children (an object documented whole); a
    key without a comment must be an object whose keys are documented.
    """
    values = yaml.safe_load(text)
    documented: list[str] = []
    undocumented: list[str] = []
    stack: list[tuple[int, str, bool]] = []
    comment: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        match = _KEY.match(line)
        if not stripped or not match:
            comment = []
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = [key for _, key, _ in stack] + [match["key"]]
        covered = any(flag for _, _, flag in stack)
        has_doc = bool(comment) and comment[0].startswith("--")
        stack.append((indent, match["key"], covered or has_doc))
        comment = []
        if covered:
            continue
        node = values
        for part in path:
            node = node[part]
        if has_doc:
            documented.append(".".join(path))
        elif not isinstance(node, dict):
            undocumented.append(".".join(path))
    return documented, undocumented


def test_every_value_is_documented_in_values_and_readme() -> None:
    documented, undocumented = documented_values((CHART / "values.yaml").read_text())
    assert not undocumented, undocumented
    assert len(documented) > 100
    readme = (CHART / "README.md").read_text()
    missing = [key for key in documented if f"| `{key}` |" not in readme]
    assert not missing, f"README.md's values table lacks {missing}"
