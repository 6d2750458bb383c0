{{/* Chart name, truncated to the 63 characters Kubernetes allows in names. */}}
{{- define "changestream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: <release>-<chart> unless the release already contains it. */}}
{{- define "changestream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: <fullname>-gateway, <fullname>-publisher. */}}
{{- define "changestream.componentName" -}}
{{- printf "%s-%s" (include "changestream.fullname" .root | trunc 52 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "changestream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels common to every object. */}}
{{- define "changestream.labels" -}}
helm.sh/chart: {{ include "changestream.chart" . }}
app.kubernetes.io/name: {{ include "changestream.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: changestream
{{- end -}}

{{/* Selector labels of one component; call with (dict "root" $ "component" "gateway"). */}}
{{- define "changestream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "changestream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "changestream.componentLabels" -}}
{{ include "changestream.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "changestream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "changestream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Image reference of one component; call with (dict "root" $ "values" .Values.gateway). */}}
{{- define "changestream.image" -}}
{{- printf "%s:%s" .values.image.repository (default .root.Chart.AppVersion .values.image.tag) -}}
{{- end -}}

{{/* Name of the Secret the chart creates for the HS256 JWT secret. */}}
{{- define "changestream.authSecretName" -}}
{{- printf "%s-auth" (include "changestream.fullname" .) -}}
{{- end -}}

{{/*
Where the HS256 secret comes from: "existing", "value", "generated" or "none" (auth off,
or public-key tokens only). See values.yaml, auth.
*/}}
{{- define "changestream.authSource" -}}
{{- $a := .Values.auth -}}
{{- if not $a.enabled -}}none
{{- else if $a.existingSecret -}}existing
{{- else if $a.jwtSecret -}}value
{{- else if $a.publicKey.existingSecret -}}none
{{- else -}}generated
{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds of the gateway: above preStop + grace period + drain window.
Fails the render when the settings contradict each other.
*/}}
{{- define "changestream.gateway.terminationGracePeriodSeconds" -}}
{{- $g := .Values.gateway -}}
{{- $grace := int $g.gracePeriodSeconds -}}
{{- $drain := int $g.drainWindowSeconds -}}
{{- $preStop := int $g.preStopSleepSeconds -}}
{{- if lt $grace 1 -}}
{{- fail "gateway.gracePeriodSeconds must be at least 1" -}}
{{- end -}}
{{- if ge $drain $grace -}}
{{- fail (printf "gateway.drainWindowSeconds (%d) must be shorter than gateway.gracePeriodSeconds (%d): the gateway refuses to start otherwise" $drain $grace) -}}
{{- end -}}
{{- $floor := add $preStop $grace $drain -}}
{{- if kindIs "invalid" $g.terminationGracePeriodSeconds -}}
{{- add $floor 5 -}}
{{- else if le (int $g.terminationGracePeriodSeconds) $floor -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) must be above preStopSleepSeconds + gracePeriodSeconds + drainWindowSeconds (%d), or Kubernetes kills pods mid-drain" (int $g.terminationGracePeriodSeconds) $floor) -}}
{{- else -}}
{{- int $g.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* terminationGracePeriodSeconds of the publisher: above preStop + grace period. */}}
{{- define "changestream.publisher.terminationGracePeriodSeconds" -}}
{{- $p := .Values.publisher -}}
{{- $grace := int $p.gracePeriodSeconds -}}
{{- if lt $grace 1 -}}
{{- fail "publisher.gracePeriodSeconds must be at least 1" -}}
{{- end -}}
{{- $floor := add (int $p.preStopSleepSeconds) $grace -}}
{{- if kindIs "invalid" $p.terminationGracePeriodSeconds -}}
{{- add $floor 5 -}}
{{- else if le (int $p.terminationGracePeriodSeconds) $floor -}}
{{- fail (printf "publisher.terminationGracePeriodSeconds (%d) must be above preStopSleepSeconds + gracePeriodSeconds (%d)" (int $p.terminationGracePeriodSeconds) $floor) -}}
{{- else -}}
{{- int $p.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/*
The non-secret settings as config-file YAML: the chart-owned keys, then the user's map.
Call with (dict "owned" (dict ...) "config" .Values.x.config "where" "gateway.config").
Numbers are written as integers (Helm reads them as floats; 1000000 would print 1e+06).
*/}}
{{- define "changestream.configFile" -}}
{{- range $k, $v := .owned }}
{{ $k }}: {{ $v | quote }}
{{- end }}
{{- range $k, $v := .config }}
{{- if hasKey $.owned $k }}
{{- fail (printf "%s.%s is set by the chart (listen is fixed; grace_period and drain_window come from gracePeriodSeconds and drainWindowSeconds)" $.where $k) }}
{{- end }}
{{- if kindIs "invalid" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) }}
{{ $k }}: {{ $v | int64 | quote }}
{{- else }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Env of the settings both binaries share: Redis, JWT. Call with
(dict "root" $ "prefix" "GATEWAY").
*/}}
{{- define "changestream.sharedEnv" -}}
{{- $v := .root.Values -}}
{{- $p := .prefix -}}
{{- if or $v.redis.cluster.nodes $v.redis.cluster.existingSecret }}
- name: {{ $p }}_REDIS_CLUSTER
{{- if $v.redis.cluster.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.cluster.existingSecret }}
      key: {{ $v.redis.cluster.existingSecretKey }}
{{- else }}
  value: {{ join "," $v.redis.cluster.nodes | quote }}
{{- end }}
{{- else if $v.redis.existingSecret }}
- name: {{ $p }}_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.redis.existingSecret }}
      key: {{ $v.redis.existingSecretKey }}
{{- else if $v.redis.url }}
- name: {{ $p }}_REDIS_URL
  value: {{ $v.redis.url | quote }}
{{- else }}
{{- fail "set redis.url, redis.existingSecret or redis.cluster: without Redis a gateway runs single-node (embedded) and pods would not share events" }}
{{- end }}
{{- $auth := include "changestream.authSource" .root }}
{{- if ne $auth "none" }}
- name: {{ $p }}_JWT_SECRET
  valueFrom:
    secretKeyRef:
      {{- if eq $auth "existing" }}
      name: {{ $v.auth.existingSecret }}
      key: {{ $v.auth.existingSecretKey }}
      {{- else }}
      name: {{ include "changestream.authSecretName" .root }}
      key: jwt-secret
      {{- end }}
{{- end }}
{{- if and $v.auth.enabled $v.auth.publicKey.existingSecret }}
- name: {{ $p }}_JWT_PUBLIC_KEY_FILE
  value: /etc/changestream/jwt/public.pem
{{- end }}
{{- if and $v.auth.enabled (not $v.auth.metricsPublic) }}
- name: {{ $p }}_METRICS_PUBLIC
  value: "false"
{{- end }}
{{- end -}}

{{/* Pod-level fields both Deployments share. Call with (dict "root" $ "values" .Values.gateway "component" "gateway"). */}}
{{- define "changestream.podCommon" -}}
{{- $root := .root -}}
{{- $c := .values -}}
serviceAccountName: {{ include "changestream.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
# Kubernetes would inject <SERVICE>_PORT=tcp://... variables for every Service; for
# Services named like ours they collide with the GATEWAY_* / PUBLISHER_* settings.
enableServiceLinks: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with $c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
affinity:
{{- if $c.affinity }}
  {{- toYaml $c.affinity | nindent 2 }}
{{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "changestream.selectorLabels" (dict "root" $root "component" .component) | nindent 14 }}
{{- end }}
{{- end -}}

{{/* The gateway's config file (GATEWAY_CONFIG). */}}
{{- define "changestream.gatewayConfig" -}}
{{- range $key := list "redis_url" "redis_cluster" }}
{{- if hasKey $.Values.gateway.config $key }}
{{- fail (printf "gateway.config.%s: Redis is set by redis.url, redis.existingSecret or redis.cluster" $key) }}
{{- end }}
{{- end }}
{{- if hasKey $.Values.gateway.config "peers" }}
{{- fail "gateway.config.peers is set by the chart (the gateway's headless peers Service)" }}
{{- end }}
{{- $owned := dict "listen" "0.0.0.0:8080" "grace_period" (printf "%ds" (int .Values.gateway.gracePeriodSeconds)) "drain_window" (printf "%ds" (int .Values.gateway.drainWindowSeconds)) -}}
# Read by the gateway via GATEWAY_CONFIG. GATEWAY_* variables override these keys.
{{- include "changestream.configFile" (dict "owned" $owned "config" .Values.gateway.config "where" "gateway.config") }}
{{- end -}}

{{/* The publisher's config file (PUBLISHER_CONFIG). */}}
{{- define "changestream.publisherConfig" -}}
{{- range $key := list "redis_url" "redis_cluster" }}
{{- if hasKey $.Values.publisher.config $key }}
{{- fail (printf "publisher.config.%s: Redis is set by redis.url, redis.existingSecret or redis.cluster" $key) }}
{{- end }}
{{- end }}
{{- $owned := dict "listen" "0.0.0.0:8081" "grace_period" (printf "%ds" (int .Values.publisher.gracePeriodSeconds)) -}}
# Read by the publisher via PUBLISHER_CONFIG. PUBLISHER_* variables override these keys.
{{- include "changestream.configFile" (dict "owned" $owned "config" .Values.publisher.config "where" "publisher.config") }}
{{- end -}}
