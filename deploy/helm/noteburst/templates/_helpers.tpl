{{/*
Names and labels.
*/}}
{{- define "noteburst.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "noteburst.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "noteburst.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "noteburst.labels" -}}
helm.sh/chart: {{ include "noteburst.chart" . }}
{{ include "noteburst.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "noteburst.selectorLabels" -}}
app.kubernetes.io/name: {{ include "noteburst.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component: (dict "root" $ "component" "api"). */}}
{{- define "noteburst.componentSelectorLabels" -}}
{{ include "noteburst.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "noteburst.componentLabels" -}}
{{ include "noteburst.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "noteburst.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "noteburst.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "noteburst.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the secret settings. */}}
{{- define "noteburst.secretName" -}}
{{- default (include "noteburst.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* The hook copies of the ConfigMap and Secret the migration Job reads. */}}
{{- define "noteburst.migrationsName" -}}
{{- printf "%s-migrations" (include "noteburst.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "noteburst.migrationsSecretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- include "noteburst.migrationsName" . }}
{{- end }}
{{- end }}

{{/*
A NOTEBURST_* value as the variable holds it: strings as they are, anything
else (numbers, booleans, lists, objects) as JSON, which is how Noteburst
parses non-string settings.  JSON also keeps large integers whole (Helm reads
YAML numbers as floats, which print as 1.6777216e+07).
*/}}
{{- define "noteburst.envValue" -}}
{{- if kindIs "string" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{/*
The secret settings: setting name -> key of `secrets.keys`, in the order the
pods get them.  The hub token only with the jupyterhub backend; the Jupyter
token is optional.
*/}}
{{- define "noteburst.secretSettings" -}}
NOTEBURST_DATABASE_URL: databaseUrl
NOTEBURST_REDIS_URL: redisUrl
NOTEBURST_SECRET_KEY: secretKey
{{- if eq .Values.config.jupyter.labBackend "jupyterhub" }}
NOTEBURST_HUB_TOKEN: hubToken
{{- end }}
NOTEBURST_JUPYTER_TOKEN: jupyterToken
{{- end }}

{{/* Every secret setting's name, whatever the backend (refused in extraEnv). */}}
{{- define "noteburst.secretNames" -}}
- NOTEBURST_DATABASE_URL
- NOTEBURST_REDIS_URL
- NOTEBURST_SECRET_KEY
- NOTEBURST_HUB_TOKEN
- NOTEBURST_JUPYTER_TOKEN
{{- end }}

{{/* The public URL: config.publicUrl, else the ingress's host. */}}
{{- define "noteburst.publicUrl" -}}
{{- if .Values.config.publicUrl }}
{{- .Values.config.publicUrl }}
{{- else if .Values.ingress.enabled }}
{{- printf "%s://%s" (ternary "https" "http" (gt (len .Values.ingress.tls) 0)) .Values.ingress.host }}
{{- end }}
{{- end }}

{{/*
The non-secret settings (a YAML object: variable -> value, null for unset),
shared by the API, the workers and the migration Job.
*/}}
{{- define "noteburst.configEnv" -}}
{{- $c := .Values.config }}
{{- $env := dict }}
{{- $_ := set $env "NOTEBURST_LOG_LEVEL" $c.logLevel }}
{{- $_ = set $env "NOTEBURST_LOG_FORMAT" $c.logFormat }}
{{- $_ = set $env "NOTEBURST_HOST" $c.host }}
{{- $_ = set $env "NOTEBURST_PORT" .Values.api.port }}
{{- $_ = set $env "NOTEBURST_DATA_DIR" .Values.dataDir }}
{{- $_ = set $env "NOTEBURST_PUBLIC_URL" (include "noteburst.publicUrl" .) }}
{{- if $c.allowedHosts }}
{{- $_ = set $env "NOTEBURST_ALLOWED_HOSTS" $c.allowedHosts }}
{{- end }}
{{- if $c.corsOrigins }}
{{- $_ = set $env "NOTEBURST_CORS_ORIGINS" $c.corsOrigins }}
{{- end }}
{{- $_ = set $env "NOTEBURST_REDIS_NAMESPACE" $c.redisNamespace }}
{{- $_ = set $env "NOTEBURST_RETENTION_DAYS" $c.retentionDays }}
{{- $a := $c.auth }}
{{- $_ = set $env "NOTEBURST_AUTH_MODE" $a.mode }}
{{- $_ = set $env "NOTEBURST_TRUSTED_PROXIES" $a.trustedProxies }}
{{- $_ = set $env "NOTEBURST_PROXY_USER_HEADER" $a.proxyUserHeader }}
{{- $_ = set $env "NOTEBURST_PROXY_SCOPES_HEADER" $a.proxyScopesHeader }}
{{- $_ = set $env "NOTEBURST_PROXY_DEFAULT_SCOPES" $a.proxyDefaultScopes }}
{{- $_ = set $env "NOTEBURST_PROXY_ADMIN_USERS" $a.proxyAdminUsers }}
{{- $_ = set $env "NOTEBURST_TOKEN_CACHE_SECONDS" $a.tokenCacheSeconds }}
{{- $j := $c.jupyter }}
{{- $_ = set $env "NOTEBURST_LAB_BACKEND" $j.labBackend }}
{{- $_ = set $env "NOTEBURST_JUPYTER_URL" $j.url }}
{{- $_ = set $env "NOTEBURST_KERNEL_NAMES" $j.kernelNames }}
{{- $_ = set $env "NOTEBURST_DEFAULT_KERNEL_NAME" $j.defaultKernelName }}
{{- $_ = set $env "NOTEBURST_WARM_KERNELS" $j.warmKernels }}
{{- $_ = set $env "NOTEBURST_WARM_KERNELS_MAX" $j.warmKernelsMax }}
{{- $_ = set $env "NOTEBURST_WARM_UP_CODE" $j.warmUpCode }}
{{- $_ = set $env "NOTEBURST_KERNEL_START_TIMEOUT" $j.kernelStartTimeout }}
{{- $_ = set $env "NOTEBURST_JUPYTER_START_TIMEOUT" $j.startTimeout }}
{{- if eq $j.labBackend "jupyterhub" }}
{{- $h := $c.hub }}
{{- $_ = set $env "NOTEBURST_HUB_URL" $h.url }}
{{- $_ = set $env "NOTEBURST_HUB_IDENTITIES" $h.identities }}
{{- $_ = set $env "NOTEBURST_HUB_USER_OPTIONS" $h.userOptions }}
{{- $_ = set $env "NOTEBURST_SPAWN_TIMEOUT" $h.spawnTimeout }}
{{- $_ = set $env "NOTEBURST_IDENTITY_WAIT_SECONDS" $h.identityWaitSeconds }}
{{- $_ = set $env "NOTEBURST_LAB_IDLE_SECONDS" $h.labIdleSeconds }}
{{- end }}
{{- $w := $c.workers }}
{{- $_ = set $env "NOTEBURST_WORKER_THREADS" $w.threads }}
{{- $_ = set $env "NOTEBURST_WORKER_LEASE_SECONDS" $w.leaseSeconds }}
{{- $_ = set $env "NOTEBURST_MAX_ATTEMPTS" $w.maxAttempts }}
{{- $_ = set $env "NOTEBURST_WORKER_OUTAGE_SECONDS" $w.outageSeconds }}
{{- $_ = set $env "NOTEBURST_WORKER_SHUTDOWN_GRACE_SECONDS" $w.shutdownGraceSeconds }}
{{- $l := $c.limits }}
{{- $_ = set $env "NOTEBURST_MAX_NOTEBOOK_BYTES" $l.maxNotebookBytes }}
{{- $_ = set $env "NOTEBURST_DEFAULT_TIMEOUT_SECONDS" $l.defaultTimeoutSeconds }}
{{- $_ = set $env "NOTEBURST_MAX_TIMEOUT_SECONDS" $l.maxTimeoutSeconds }}
{{- $_ = set $env "NOTEBURST_CACHE_ENVIRONMENT_TAG" $l.cacheEnvironmentTag }}
{{- $_ = set $env "NOTEBURST_MAX_QUEUED_PER_USER" $l.maxQueuedPerUser }}
{{- $_ = set $env "NOTEBURST_MAX_RUNNING_PER_USER" $l.maxRunningPerUser }}
{{- $_ = set $env "NOTEBURST_MAX_SUBMISSIONS_PER_MINUTE" $l.maxSubmissionsPerMinute }}
{{- $_ = set $env "NOTEBURST_WEBHOOK_ALLOWED_NETWORKS" $c.webhooks.allowedNetworks }}
{{- $secretNames := include "noteburst.secretNames" . | fromYamlArray }}
{{- range $name, $value := $c.extraEnv }}
{{- if not (hasPrefix "NOTEBURST_" $name) }}
{{- fail (printf "config.extraEnv.%s: only NOTEBURST_* settings go here (use api.extraEnv or worker.extraEnv for others)" $name) }}
{{- end }}
{{- if has $name $secretNames }}
{{- fail (printf "config.extraEnv.%s is a secret setting: it belongs in the Secret (secrets.*), never in the ConfigMap" $name) }}
{{- end }}
{{- if or (hasKey $env $name) (eq $name "NOTEBURST_WORKER_HTTP_PORT") }}
{{- fail (printf "config.extraEnv.%s is set by the chart from its own value: set that instead (values.yaml names the variable of each key)" $name) }}
{{- end }}
{{- $_ = set $env $name $value }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/* The ConfigMap's data: the settings above that are set, sorted by name. */}}
{{- define "noteburst.configData" -}}
{{- range $name, $value := include "noteburst.configEnv" . | fromYaml }}
{{- /* null, "" and [] leave Noteburst's default; {} is a value (warmKernels: {} turns the pool off). */}}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value "")) (and (kindIs "slice" $value) (empty $value))) }}
{{ $name }}: {{ include "noteburst.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Refuse values that cannot work, before anything is deployed.
*/}}
{{- define "noteburst.validate" -}}
{{- $c := .Values.config }}
{{- if not (has $c.auth.mode (list "tokens" "proxy")) }}
{{- fail (printf "config.auth.mode must be tokens or proxy (got %v): the chart serves on a pod address, where `none` would make every caller an administrator" $c.auth.mode) }}
{{- end }}
{{- if and (eq $c.auth.mode "proxy") (not $c.auth.trustedProxies) }}
{{- fail "config.auth.mode=proxy needs config.auth.trustedProxies (the ingress controller's pod addresses): without it every request is anonymous" }}
{{- end }}
{{- if and (eq $c.auth.mode "proxy") .Values.ingress.enabled (not .Values.ingress.authProxy.enabled) (not (hasKey .Values.ingress.annotations "nginx.ingress.kubernetes.io/auth-url")) }}
{{- fail "config.auth.mode=proxy with an ingress that does not authenticate would let any client name itself in the user header: enable ingress.authProxy (or give your own nginx.ingress.kubernetes.io/auth-url annotation)" }}
{{- end }}
{{- if not (has $c.jupyter.labBackend (list "jupyterhub" "local")) }}
{{- fail (printf "config.jupyter.labBackend must be jupyterhub or local (got %v)" $c.jupyter.labBackend) }}
{{- end }}
{{- if eq $c.jupyter.labBackend "jupyterhub" }}
{{- if not $c.hub.url }}
{{- fail "config.jupyter.labBackend=jupyterhub needs config.hub.url" }}
{{- end }}
{{- $needed := include "noteburst.workerPodsAtMost" . | int }}
{{- if lt (len $c.hub.identities) $needed }}
{{- fail (printf "config.hub.identities has %d bot users but up to %d worker pods can run at once (%s plus the rolling update's maxSurge): each needs its own identity, so add names (and cover them in the hub's role) or run fewer workers" (len $c.hub.identities) $needed (ternary "worker.autoscaling.maxReplicas" "worker.replicas" .Values.worker.autoscaling.enabled)) }}
{{- end }}
{{- if ne (len $c.hub.identities) (len (uniq $c.hub.identities)) }}
{{- fail "config.hub.identities lists a name twice" }}
{{- end }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- $v := .Values.secrets.values }}
{{- if not (and $v.databaseUrl $v.redisUrl $v.secretKey) }}
{{- fail "secrets.existingSecret is empty, so the chart creates the Secret: secrets.values.databaseUrl, redisUrl and secretKey are required" }}
{{- end }}
{{- if and (eq $c.jupyter.labBackend "jupyterhub") (not $v.hubToken) }}
{{- fail "secrets.values.hubToken is required with config.jupyter.labBackend=jupyterhub" }}
{{- end }}
{{- end }}
{{- if lt (float64 $c.workers.shutdownGraceSeconds) 0.0 }}
{{- fail "config.workers.shutdownGraceSeconds must not be negative" }}
{{- end }}
{{- end }}

{{/*
The most worker pods that can run at once: replicas (or the autoscaler's
maximum) plus the rolling update's surge (a percentage is rounded up, as
Kubernetes does).
*/}}
{{- define "noteburst.workerPodsAtMost" -}}
{{- $w := .Values.worker }}
{{- $replicas := ternary $w.autoscaling.maxReplicas $w.replicas $w.autoscaling.enabled | int }}
{{- $surge := 0 }}
{{- if eq $w.strategy.type "RollingUpdate" }}
{{- $given := dig "rollingUpdate" "maxSurge" "25%" $w.strategy }}
{{- if kindIs "string" $given }}
{{- $percent := trimSuffix "%" $given | float64 }}
{{- $surge = ceil (divf (mulf $percent $replicas) 100) | int }}
{{- else }}
{{- $surge = $given | int }}
{{- end }}
{{- end }}
{{- add $replicas $surge }}
{{- end }}

{{/* The worker pods' terminationGracePeriodSeconds: the shutdown grace plus a margin. */}}
{{- define "noteburst.workerTerminationGrace" -}}
{{- add (ceil (float64 .Values.config.workers.shutdownGraceSeconds) | int) (.Values.worker.terminationGraceMarginSeconds | int) }}
{{- end }}

{{/*
The worker's startup probe failureThreshold: Noteburst's own bound on a
worker's start (worker/runtime.py boot_timeout: with jupyterhub the wait for
an identity plus the spawn plus 60 s; locally the server's start plus 60 s),
divided by the probe's period.  Noteburst's defaults are repeated here for
unset values.
*/}}
{{- define "noteburst.workerStartupFailureThreshold" -}}
{{- $p := .Values.worker.startupProbe }}
{{- if $p.failureThreshold }}
{{- $p.failureThreshold | int }}
{{- else }}
{{- $c := .Values.config }}
{{- $seconds := 0.0 }}
{{- if eq $c.jupyter.labBackend "jupyterhub" }}
{{- $wait := ternary 120.0 $c.hub.identityWaitSeconds (kindIs "invalid" $c.hub.identityWaitSeconds) | float64 }}
{{- $spawn := ternary 120.0 $c.hub.spawnTimeout (kindIs "invalid" $c.hub.spawnTimeout) | float64 }}
{{- $seconds = addf $wait $spawn 60.0 }}
{{- else }}
{{- $start := ternary 60.0 $c.jupyter.startTimeout (kindIs "invalid" $c.jupyter.startTimeout) | float64 }}
{{- $seconds = addf $start 60.0 }}
{{- end }}
{{- ceil (divf $seconds ($p.periodSeconds | float64)) | int }}
{{- end }}
{{- end }}

{{/* The Host header probes send when allowedHosts is set. */}}
{{- define "noteburst.probeHost" -}}
{{- with .Values.config.allowedHosts }}
{{- $first := first . }}
{{- if ne $first "*" }}
{{- $first | replace "*." "probe." }}
{{- end }}
{{- end }}
{{- end }}

{{/* An HTTP probe: (dict "root" $ "path" "/healthz" "port" "http" "probe" .Values.api.livenessProbe). */}}
{{- define "noteburst.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
  {{- with include "noteburst.probeHost" .root }}
  httpHeaders:
    - name: Host
      value: {{ . | quote }}
  {{- end }}
{{- range $key, $value := .probe }}
{{- if not (kindIs "invalid" $value) }}
{{ $key }}: {{ $value }}
{{- end }}
{{- end }}
{{- end }}

{{/* The secret settings as environment variables: always secretKeyRef. */}}
{{- define "noteburst.secretEnv" -}}
{{- $root := .root }}
{{- $name := .secretName }}
{{- range $setting, $key := include "noteburst.secretSettings" $root | fromYaml }}
- name: {{ $setting }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ index $root.Values.secrets.keys $key }}
      {{- if eq $setting "NOTEBURST_JUPYTER_TOKEN" }}
      optional: true
      {{- end }}
{{- end }}
{{- end }}

{{/* Volumes every pod mounts: /tmp and the data directory. */}}
{{- define "noteburst.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
- name: data
  emptyDir:
    sizeLimit: {{ .Values.dataDirSizeLimit }}
{{- end }}

{{- define "noteburst.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: data
  mountPath: {{ .Values.dataDir }}
{{- end }}

{{/* Environment every container gets besides the settings. */}}
{{- define "noteburst.baseEnv" -}}
# The root filesystem is read-only: whatever writes under HOME (caches,
# Jupyter's runtime files) writes to the /tmp emptyDir.
- name: HOME
  value: /tmp
{{- end }}
