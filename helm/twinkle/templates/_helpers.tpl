{{/*
Names, labels, images, and the environment every scheduler process shares.
The API, the dispatcher and the migration get their Redis, database and storage settings from the
one helper "twinkle.schedulerEnv", so they cannot drift apart.
*/}}

{{- define "twinkle.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "twinkle.fullname" -}}
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

{{- define "twinkle.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels; call with (dict "root" $ "component" "api"). */}}
{{- define "twinkle.selectorLabels" -}}
app.kubernetes.io/name: {{ include "twinkle.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Common labels; call with (dict "root" $ "component" "api"). */}}
{{- define "twinkle.labels" -}}
helm.sh/chart: {{ include "twinkle.chart" .root }}
{{ include "twinkle.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: twinkle-commons
{{- end }}

{{- define "twinkle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "twinkle.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "twinkle.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Workers run the CUDA build of the same image. */}}
{{- define "twinkle.workerImage" -}}
{{- $tag := .Values.worker.image.tag | default (printf "%s%s" (default .Chart.AppVersion .Values.image.tag) .Values.worker.image.tagSuffix) }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{- define "twinkle.secretName" -}}
{{- include "twinkle.fullname" . }}
{{- end }}

{{- define "twinkle.configName" -}}
{{- printf "%s-config" (include "twinkle.fullname" .) }}
{{- end }}

{{- define "twinkle.apiServiceName" -}}
{{- printf "%s-api" (include "twinkle.fullname" .) }}
{{- end }}

{{- define "twinkle.redisName" -}}
{{- printf "%s-redis" (include "twinkle.fullname" .) }}
{{- end }}

{{- define "twinkle.postgresqlName" -}}
{{- printf "%s-postgresql" (include "twinkle.fullname" .) }}
{{- end }}

{{- define "twinkle.storageClaimName" -}}
{{- default (printf "%s-storage" (include "twinkle.fullname" .)) .Values.storage.existingClaim }}
{{- end }}

{{- define "twinkle.schedulerName" -}}
{{- printf "%s-scheduler" (include "twinkle.fullname" .) }}
{{- end }}

{{/*
"true" when the dispatcher serves its Prometheus metrics (dispatch --metrics-port): scheduler.metrics.enabled
when set, else whatever serviceMonitor.enabled is.
*/}}
{{- define "twinkle.schedulerMetricsEnabled" -}}
{{- $on := .Values.scheduler.metrics.enabled }}
{{- if kindIs "invalid" $on }}{{ $on = .Values.serviceMonitor.enabled }}{{ end }}
{{- if and .Values.scheduler.enabled $on }}true{{ end }}
{{- end }}

{{- define "twinkle.platformEnabled" -}}
{{- if or .Values.api.enabled .Values.scheduler.enabled }}true{{ end }}
{{- end }}

{{/*
A credential for the chart's own Secret: the value given, else the one this release already stored
(so upgrades keep it), else a new random one. Call with (list $ "key" .Values.x.y).
*/}}
{{- define "twinkle.credential" -}}
{{- $root := index . 0 }}
{{- $key := index . 1 }}
{{- $given := index . 2 }}
{{- if $given }}
{{- $given }}
{{- else }}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (include "twinkle.secretName" $root) }}
{{- $stored := dig "data" $key "" $existing }}
{{- if $stored }}
{{- $stored | b64dec }}
{{- else }}
{{- randAlphaNum 40 }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where each credential lives: (dict "name" SECRET "key" KEY). */}}
{{- define "twinkle.ref.secretKey" -}}
{{- $name := default (include "twinkle.secretName" .) .Values.auth.existingSecret }}
{{- $key := ternary .Values.auth.secretKeyKey "secret-key" (ne .Values.auth.existingSecret "") }}
name: {{ $name }}
key: {{ $key }}
{{- end }}

{{- define "twinkle.ref.adminToken" -}}
{{- $name := default (include "twinkle.secretName" .) .Values.auth.existingSecret }}
{{- $key := ternary .Values.auth.adminTokenKey "admin-token" (ne .Values.auth.existingSecret "") }}
name: {{ $name }}
key: {{ $key }}
{{- end }}

{{- define "twinkle.ref.postgresPassword" -}}
{{- $name := default (include "twinkle.secretName" .) .Values.postgresql.auth.existingSecret }}
{{- $key := ternary .Values.postgresql.auth.existingSecretKey "postgres-password" (ne .Values.postgresql.auth.existingSecret "") }}
name: {{ $name }}
key: {{ $key }}
{{- end }}

{{- define "twinkle.ref.databaseUrl" -}}
{{- $name := default (include "twinkle.secretName" .) .Values.externalDatabase.existingSecret }}
{{- $key := ternary .Values.externalDatabase.existingSecretKey "database-url" (ne .Values.externalDatabase.existingSecret "") }}
name: {{ $name }}
key: {{ $key }}
{{- end }}

{{- define "twinkle.ref.redisPassword" -}}
{{- $name := default (include "twinkle.secretName" .) .Values.redis.auth.existingSecret }}
{{- $key := ternary .Values.redis.auth.existingSecretKey "redis-password" (ne .Values.redis.auth.existingSecret "") }}
name: {{ $name }}
key: {{ $key }}
{{- end }}

{{- define "twinkle.ref.redisUrl" -}}
{{- $name := default (include "twinkle.secretName" .) .Values.externalRedis.existingSecret }}
{{- $key := ternary .Values.externalRedis.existingSecretKey "redis-url" (ne .Values.externalRedis.existingSecret "") }}
name: {{ $name }}
key: {{ $key }}
{{- end }}

{{- define "twinkle.ref.s3AccessKeyId" -}}
{{- $name := default (include "twinkle.secretName" .) .Values.s3.existingSecret }}
{{- $key := ternary .Values.s3.accessKeyIdKey "s3-access-key-id" (ne .Values.s3.existingSecret "") }}
name: {{ $name }}
key: {{ $key }}
{{- end }}

{{- define "twinkle.ref.s3SecretAccessKey" -}}
{{- $name := default (include "twinkle.secretName" .) .Values.s3.existingSecret }}
{{- $key := ternary .Values.s3.secretAccessKeyKey "s3-secret-access-key" (ne .Values.s3.existingSecret "") }}
name: {{ $name }}
key: {{ $key }}
{{- end }}

{{- define "twinkle.ref.workerToken" -}}
{{- $name := default (include "twinkle.secretName" .) .Values.worker.existingSecret }}
{{- $key := ternary .Values.worker.existingSecretKey "worker-token" (ne .Values.worker.existingSecret "") }}
name: {{ $name }}
key: {{ $key }}
{{- end }}

{{- define "twinkle.s3HasKeys" -}}
{{- if or .Values.s3.existingSecret .Values.s3.accessKeyId .Values.s3.secretAccessKey }}true{{ end }}
{{- end }}

{{/*
Redis URL environment. The bundled Redis's URL is assembled by Kubernetes from the password variable
($(VAR) expansion), so the password itself never appears in the pod spec or the ConfigMap.
Call with (dict "root" $ "name" "TWINKLE_SCHEDULER_REDIS_URL").
*/}}
{{- define "twinkle.redisUrlEnv" -}}
{{- $root := .root }}
{{- if $root.Values.redis.enabled }}
- name: TWINKLE_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "twinkle.ref.redisPassword" $root | nindent 6 }}
- name: {{ .name }}
  value: {{ printf "redis://:$(TWINKLE_REDIS_PASSWORD)@%s:%d/%d" (include "twinkle.redisName" $root) (int $root.Values.redis.service.port) (int $root.Values.redis.database) | quote }}
{{- else }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      {{- include "twinkle.ref.redisUrl" $root | nindent 6 }}
{{- end }}
{{- end }}

{{/* Environment shared by `serve`, `dispatch` and `migrate`: one source for database, Redis and storage. */}}
{{- define "twinkle.schedulerEnv" -}}
{{- if .Values.postgresql.enabled }}
- name: TWINKLE_DB_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- include "twinkle.ref.postgresPassword" . | nindent 6 }}
- name: TWINKLE_SCHEDULER_DATABASE_URL
  value: {{ printf "postgresql://%s:$(TWINKLE_DB_PASSWORD)@%s:%d/%s" .Values.postgresql.auth.username (include "twinkle.postgresqlName" .) (int .Values.postgresql.service.port) .Values.postgresql.auth.database | quote }}
{{- else }}
- name: TWINKLE_SCHEDULER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- include "twinkle.ref.databaseUrl" . | nindent 6 }}
{{- end }}
{{- include "twinkle.redisUrlEnv" (dict "root" . "name" "TWINKLE_SCHEDULER_REDIS_URL") }}
- name: TWINKLE_SCHEDULER_SECRET_KEY
  valueFrom:
    secretKeyRef:
      {{- include "twinkle.ref.secretKey" . | nindent 6 }}
- name: TWINKLE_SCHEDULER_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      {{- include "twinkle.ref.adminToken" . | nindent 6 }}
{{- if include "twinkle.s3HasKeys" . }}
- name: TWINKLE_SCHEDULER_S3_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      {{- include "twinkle.ref.s3AccessKeyId" . | nindent 6 }}
- name: TWINKLE_SCHEDULER_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      {{- include "twinkle.ref.s3SecretAccessKey" . | nindent 6 }}
{{- end }}
{{- end }}

{{/* envFrom + env for a scheduler-side container. */}}
{{- define "twinkle.schedulerEnvBlock" -}}
envFrom:
  - configMapRef:
      name: {{ include "twinkle.configName" . }}
env:
  {{- include "twinkle.schedulerEnv" . | nindent 2 }}
{{- end }}

{{/* Volumes every scheduler-side pod mounts (tmp, S3 client config, local storage). */}}
{{- define "twinkle.schedulerVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /home/twinkle
{{- if and .Values.s3.bucket (ne .Values.s3.addressingStyle "auto") }}
- name: aws-config
  mountPath: /etc/twinkle/aws
  readOnly: true
{{- end }}
{{- end }}

{{- define "twinkle.schedulerVolumes" -}}
{{- /* the root filesystem is read-only; these are the only places a process may write */}}
- name: tmp
  emptyDir: {}
- name: home
  emptyDir: {}
{{- if and .Values.s3.bucket (ne .Values.s3.addressingStyle "auto") }}
- name: aws-config
  configMap:
    name: {{ printf "%s-aws" (include "twinkle.fullname" .) }}
{{- end }}
{{- end }}

{{/* The migration init container; the API and dispatcher pods both start with it. */}}
{{- define "twinkle.migrateInitContainer" -}}
- name: migrate
  image: {{ include "twinkle.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["twinkle-scheduler", "migrate"]
  {{- include "twinkle.schedulerEnvBlock" . | nindent 2 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.migrations.resources | nindent 4 }}
  volumeMounts:
    {{- include "twinkle.schedulerVolumeMounts" . | nindent 4 }}
{{- end }}

{{/*
Cross-field checks the JSON schema cannot phrase helpfully; each names the value to set.
*/}}
{{- define "twinkle.validate" -}}
{{- $platform := include "twinkle.platformEnabled" . }}
{{- if and $platform (not .Values.postgresql.enabled) (not .Values.externalDatabase.url) (not .Values.externalDatabase.existingSecret) }}
{{- fail "postgresql.enabled=false needs externalDatabase.url (e.g. postgresql://twinkle:PASSWORD@db.example.org:5432/twinkle) or externalDatabase.existingSecret" }}
{{- end }}
{{- if and $platform (not .Values.redis.enabled) (not .Values.externalRedis.url) (not .Values.externalRedis.existingSecret) }}
{{- fail "redis.enabled=false needs externalRedis.url (e.g. redis://:PASSWORD@redis.example.org:6379/0) or externalRedis.existingSecret" }}
{{- end }}
{{- if and .Values.api.enabled (gt (int .Values.api.replicaCount) 1) (not .Values.s3.bucket) }}
{{- fail (printf "api.replicaCount=%d needs s3.bucket: without it checkpoints go to a ReadWriteOnce volume only one API pod can mount; set s3.bucket or api.replicaCount=1" (int .Values.api.replicaCount)) }}
{{- end }}
{{- if and .Values.s3.bucket (not .Values.s3.existingSecret) (ne (empty .Values.s3.accessKeyId) (empty .Values.s3.secretAccessKey)) }}
{{- fail "s3.accessKeyId and s3.secretAccessKey go together: set both, or neither to use the pod's own cloud identity, or s3.existingSecret" }}
{{- end }}
{{- if le (float64 .Values.config.leaseS) (float64 .Values.config.heartbeatIntervalS) }}
{{- fail (printf "config.leaseS (%v) must exceed config.heartbeatIntervalS (%v), or every worker is lost between two heartbeats" .Values.config.leaseS .Values.config.heartbeatIntervalS) }}
{{- end }}
{{- if .Values.worker.enabled }}
{{- if and (not .Values.worker.token) (not .Values.worker.existingSecret) }}
{{- fail "worker.enabled=true needs worker.token (twk_w_..., from POST /api/v1/worker-tokens with the admin token) or worker.existingSecret; see NOTES of a platform install or docs/deploy.md" }}
{{- end }}
{{- if and (not .Values.worker.serverUrl) (not .Values.api.enabled) }}
{{- fail "worker.enabled=true with api.enabled=false needs worker.serverUrl (the platform's API URL, e.g. https://twinkle.example.org)" }}
{{- end }}
{{- if and (eq .Values.worker.isolation "container") (not .Values.worker.runtimeClassName) }}
{{- fail "worker.isolation=container says the pod is the sandbox, so it needs worker.runtimeClassName (a sandboxing runtime: gVisor \"gvisor\"/\"runsc\", Kata \"kata\"); or use worker.isolation=bwrap" }}
{{- end }}
{{- if and (eq .Values.worker.isolation "none") (not .Values.worker.trustedPool) }}
{{- fail "worker.isolation=none runs jobs unisolated: set worker.trustedPool=true to vouch for every job this pool runs (only jobs whose owner opted out are sent to it), or use worker.isolation=bwrap" }}
{{- end }}
{{- if and .Values.networkPolicy.enabled .Values.worker.serverUrl (not .Values.networkPolicy.worker.extraEgress) }}
{{- fail "networkPolicy.enabled=true with worker.serverUrl (an API outside this cluster) needs networkPolicy.worker.extraEgress: rules for the API, its broker and S3 endpoint, e.g. [{to: [{ipBlock: {cidr: 203.0.113.10/32}}], ports: [{port: 443, protocol: TCP}]}]; or networkPolicy.enabled=false" }}
{{- end }}
{{- range .Values.worker.pools }}
{{- if not .name }}
{{- fail "every entry of worker.pools needs a name (it becomes part of the DaemonSet name)" }}
{{- end }}
{{- end }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.api.enabled) }}
{{- fail "ingress.enabled=true routes to the API: it needs api.enabled=true" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.api.enabled) }}
{{- fail "serviceMonitor.enabled=true scrapes the API's /metrics: it needs api.enabled=true" }}
{{- end }}
{{- end }}
