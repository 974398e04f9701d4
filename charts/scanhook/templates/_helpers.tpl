{{/* Names and labels, as `helm create` makes them. */}}
{{- define "scanhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scanhook.fullname" -}}
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

{{- define "scanhook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "scanhook.labels" -}}
helm.sh/chart: {{ include "scanhook.chart" . }}
{{ include "scanhook.selectorLabels" . }}
app.kubernetes.io/version: {{ include "scanhook.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "scanhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scanhook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "scanhook.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scanhook.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "scanhook.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "scanhook.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "scanhook.imageTag" .) }}
{{- end }}
{{- end }}

{{- define "scanhook.secretName" -}}
{{- default (printf "%s-secrets" (include "scanhook.fullname" .)) .Values.existingSecret }}
{{- end }}

{{/* Where things are inside the pod. The config file's paths must name these. */}}
{{- define "scanhook.secretsDir" -}}/run/secrets/scanhook{{- end }}
{{- define "scanhook.storeSecretDir" -}}/run/secrets/scanhook-store{{- end }}
{{- define "scanhook.configDir" -}}/etc/scanhook{{- end }}
{{- define "scanhook.dataDir" -}}/var/lib/scanhook{{- end }}
{{- define "scanhook.containerPort" -}}8080{{- end }}

{{/*
scanhook.durationSeconds is a Go duration string ("20s", "1m30s", "500ms")
in whole seconds, rounded up. It fails on anything time.ParseDuration would
refuse that the schema lets through.
*/}}
{{- define "scanhook.durationSeconds" -}}
{{- $d := toString . }}
{{- $parts := regexFindAll "[0-9]+(\\.[0-9]*)?(ns|us|µs|μs|ms|s|m|h)" $d -1 }}
{{- if or (not $parts) (ne (join "" $parts) $d) }}
{{- fail (printf "%q is not a Go duration such as 20s or 1m30s (units ns, us, ms, s, m, h)" $d) }}
{{- end }}
{{- $unit := dict "ns" 0.000000001 "us" 0.000001 "µs" 0.000001 "μs" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 }}
{{- $sec := 0.0 }}
{{- range $parts }}
{{- $u := regexFind "(ns|us|µs|μs|ms|s|m|h)$" . }}
{{- $sec = addf $sec (mulf (trimSuffix $u . | float64) (get $unit $u)) }}
{{- end }}
{{- ceil $sec | int }}
{{- end }}

{{/*
scanhook.dispatchStopSeconds is the longest scanhook's dispatcher takes to
stop once the HTTP server has drained: internal/dispatch's MaxStopTime
(calls in flight, those it then cancels, handing its jobs back to the
queue); deploy/chart_test.go holds the two equal.
Killed before that, its jobs wait out their lease before another replica
takes them.
*/}}
{{- define "scanhook.dispatchStopSeconds" -}}25{{- end }}

{{/*
scanhook.stopSeconds is how long a pod needs from the moment it is told to
terminate: the preStop sleep, then on SIGTERM the HTTP drain
(config.server.shutdown_timeout, scanhook's default 20s), then the
dispatcher's stop, and 5s to spare for closing the store and exiting.
*/}}
{{- define "scanhook.stopSeconds" -}}
{{- $server := default dict (get (default dict .Values.config) "server") }}
{{- $drain := include "scanhook.durationSeconds" (default "20s" (get $server "shutdown_timeout")) | int }}
{{- add (int .Values.preStopSleepSeconds) $drain (include "scanhook.dispatchStopSeconds" . | int) 5 }}
{{- end }}

{{/*
scanhook.terminationGracePeriodSeconds is terminationGracePeriodSeconds
when set, else scanhook.stopSeconds; a set value below that is refused.
*/}}
{{- define "scanhook.terminationGracePeriodSeconds" -}}
{{- $need := include "scanhook.stopSeconds" . | int }}
{{- $set := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $set }}
{{- $need }}
{{- else if lt (int $set) $need }}
{{- fail (printf "terminationGracePeriodSeconds is %d but a pod needs %d to stop cleanly: preStopSleepSeconds + config.server.shutdown_timeout + %ds for the dispatcher + 5s; leave it null to derive it, or lower config.server.shutdown_timeout or preStopSleepSeconds" (int $set) $need (include "scanhook.dispatchStopSeconds" . | int)) }}
{{- else }}
{{- int $set }}
{{- end }}
{{- end }}

{{/*
scanhook.validate refuses combinations the schema cannot express, each with
a message that says what to change. It renders nothing.
*/}}
{{- define "scanhook.validate" -}}
{{- $v := .Values }}
{{- if eq $v.store.driver "sqlite" }}
{{- if gt (int $v.replicaCount) 1 }}
{{- fail (printf "replicaCount is %d but store.driver is sqlite: SQLite is one process's file, so run 1 replica, or set store.driver=postgres and store.postgres.existingSecret for several" (int $v.replicaCount)) }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs store.driver=postgres: SQLite is one process's file and cannot be shared by several replicas" }}
{{- end }}
{{- end }}
{{- if eq $v.store.driver "postgres" }}
{{- if not $v.store.postgres.existingSecret }}
{{- fail "store.driver is postgres: set store.postgres.existingSecret to a Secret holding the DSN (key store.postgres.secretKey, default \"dsn\")" }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not (or $v.networkPolicy.egress.postgres.cidrs $v.networkPolicy.egress.postgres.namespaces)) }}
{{- fail "networkPolicy.enabled with store.driver=postgres: set networkPolicy.egress.postgres.cidrs or .namespaces, or the pods cannot reach the database" }}
{{- end }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- if gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas is above autoscaling.maxReplicas" }}
{{- end }}
{{- if not (or $v.autoscaling.targetCPUUtilizationPercentage $v.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling.enabled: set targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" }}
{{- end }}
{{- end }}
{{- if and $v.podDisruptionBudget.enabled (not (kindIs "invalid" $v.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" $v.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- if and $v.podDisruptionBudget.enabled (kindIs "invalid" $v.podDisruptionBudget.minAvailable) (kindIs "invalid" $v.podDisruptionBudget.maxUnavailable) }}
{{- fail "podDisruptionBudget.enabled: set minAvailable or maxUnavailable" }}
{{- end }}
{{- if and $v.workloadIdentity.enabled (not $v.workloadIdentity.clientId) (not (hasKey $v.serviceAccount.annotations "azure.workload.identity/client-id")) }}
{{- fail "workloadIdentity.enabled: set workloadIdentity.clientId to the client id of the app registration or managed identity that has the Defender permissions" }}
{{- end }}
{{- if and $v.workloadIdentity.enabled (not $v.serviceAccount.create) $v.workloadIdentity.clientId }}
{{- fail "workloadIdentity.clientId is set but serviceAccount.create is false: annotate your own ServiceAccount with azure.workload.identity/client-id and leave clientId empty" }}
{{- end }}
{{- if and $v.ingress.enabled (not $v.ingress.tls) }}
{{- fail "ingress.enabled without ingress.tls: webhook tokens would cross the network in clear; add a tls entry (secretName and hosts)" }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not (or $v.networkPolicy.ingress.namespaces $v.networkPolicy.ingress.cidrs)) }}
{{- fail "networkPolicy.enabled with no networkPolicy.ingress.namespaces or .cidrs would refuse every alert: list the namespaces of your ingress controller, Prometheus and in-cluster senders" }}
{{- end }}
{{- if and $v.existingSecret $v.secrets }}
{{- fail "set secrets or existingSecret, not both" }}
{{- end }}
{{- include "scanhook.checkSecretPaths" (dict "config" (include "scanhook.configYAML" . | fromYaml) "Values" $v) }}
{{- end }}

{{/*
scanhook.config is the config file: the user's `config`, plus the keys the
chart owns because they must agree with the pod (listen port, rules and
store paths, the credential workload identity implies).
*/}}
{{- define "scanhook.configYAML" -}}
{{- $c := deepCopy (default dict .Values.config) }}
{{- range $k, $hint := dict "listen" "the chart listens on 8080; set service.port for the Service" "rules" "the chart mounts `rules` at /etc/scanhook/rules.yaml" "store" "use store.driver and store.postgres.existingSecret" }}
{{- if hasKey $c $k }}
{{- fail (printf "config.%s is set by the chart: %s" $k $hint) }}
{{- end }}
{{- end }}
{{- $_ := set $c "listen" (printf ":%s" (include "scanhook.containerPort" .)) }}
{{- $_ = set $c "rules" (printf "%s/rules.yaml" (include "scanhook.configDir" .)) }}
{{- if eq .Values.store.driver "postgres" }}
{{- /* dsn: "" overrides the loader's SQLite default, which dsn_file would otherwise clash with. */}}
{{- $_ = set $c "store" (dict "driver" "postgres" "dsn" "" "dsn_file" (printf "%s/dsn" (include "scanhook.storeSecretDir" .))) }}
{{- else }}
{{- $_ = set $c "store" (dict "driver" "sqlite" "dsn" (printf "%s/scanhook.db" (include "scanhook.dataDir" .))) }}
{{- end }}
{{- if .Values.workloadIdentity.enabled }}
{{- $d := default dict (get $c "defender") }}
{{- $cred := default "" (get $d "credential") }}
{{- if not $cred }}
{{- $_ = set $d "credential" "workload-identity" }}
{{- else if not (has $cred (list "workload-identity" "default")) }}
{{- fail (printf "workloadIdentity.enabled but config.defender.credential is %q: use workload-identity (or leave it unset)" $cred) }}
{{- end }}
{{- $_ = set $c "defender" $d }}
{{- end }}
{{- toYaml $c }}
{{- end }}

{{/*
scanhook.checkSecretPaths: every *_file in the config must be a file the pod
has: /run/secrets/scanhook/<key> with <key> in `secrets` (or in
existingSecret, which the chart cannot see).
*/}}
{{- define "scanhook.checkSecretPaths" -}}
{{- $v := .Values }}
{{- $c := .config }}
{{- $dir := "/run/secrets/scanhook/" }}
{{- $files := list }}
{{- $d := default dict (get $c "defender") }}
{{- range $k := list "client_secret_file" "client_certificate_file" }}
{{- with get $d $k }}{{ $files = append $files (list (printf "config.defender.%s" $k) .) }}{{ end }}
{{- end }}
{{- range $name, $s := default dict (get $c "sources") }}
{{- $auth := default dict (get (default dict $s) "auth") }}
{{- range $k := list "bearer_token_file" "hmac_secret_file" "query_token_file" }}
{{- with get $auth $k }}{{ $files = append $files (list (printf "config.sources.%s.auth.%s" $name $k) .) }}{{ end }}
{{- end }}
{{- end }}
{{- range $f := $files }}
{{- $field := index $f 0 }}
{{- $path := index $f 1 }}
{{- if not (hasPrefix $dir $path) }}
{{- fail (printf "%s: %q is not a file the pod has: secrets are mounted at %s<key>, with <key> a key of `secrets` or of `existingSecret`" $field $path $dir) }}
{{- end }}
{{- $key := trimPrefix $dir $path }}
{{- if and (not $v.existingSecret) (not (hasKey $v.secrets $key)) }}
{{- fail (printf "%s: %q needs a value secrets.%s (or existingSecret with the key %q)" $field $path $key $key) }}
{{- end }}
{{- end }}
{{- end }}
