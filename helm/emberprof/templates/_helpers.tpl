{{- define "emberprof.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "emberprof.fullname" -}}
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

{{- define "emberprof.selectorLabels" -}}
app.kubernetes.io/name: {{ include "emberprof.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "emberprof.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "emberprof.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "emberprof.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "emberprof.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret the exporter credentials come from, or "" for none. */}}
{{- define "emberprof.secretName" -}}
{{- if .Values.secret.existingSecret -}}
{{- .Values.secret.existingSecret -}}
{{- else if .Values.secret.create -}}
{{- printf "%s-exporters" (include "emberprof.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* "true" when /debug/pprof is on and a Secret provides its token, else "". */}}
{{- define "emberprof.debugPprofToken" -}}
{{- if and .Values.debugPprof.enabled (or .Values.secret.existingSecret (and .Values.secret.create .Values.secret.debugPprofToken)) -}}
true
{{- end -}}
{{- end -}}

{{- define "emberprof.debugPprofTokenDir" -}}
/etc/emberprof/debug-pprof
{{- end -}}

{{/*
The capabilities the Dockerfile's setcap puts on /usr/local/bin/emberprof. A non-root
process gains file capabilities at exec only if the bounding set (the container's
capabilities) holds all of them; otherwise the kernel refuses the exec with EPERM, which
shows up as a crash loop with no log line. Keep in sync with the Dockerfile (a chart test
compares the two).
*/}}
{{- define "emberprof.fileCapabilities" -}}
BPF PERFMON SYS_RESOURCE SYS_PTRACE DAC_READ_SEARCH CHECKPOINT_RESTORE SYSLOG
{{- end -}}

{{- define "emberprof.securityContext" -}}
{{- $sc := dict "readOnlyRootFilesystem" true -}}
{{- if .Values.privileged -}}
{{- /* Root, so that the runtime's full capability set applies without file capabilities:
       a runtime that does not know CAP_BPF leaves it out of the bounding set, and the
       binary's file capabilities would then make the exec fail. */ -}}
{{- $_ := merge $sc (dict "privileged" true "allowPrivilegeEscalation" true "runAsUser" 0 "runAsNonRoot" false) -}}
{{- else -}}
{{- $uid := int .Values.runAsUser -}}
{{- if ne $uid 0 -}}
{{- range $cap := splitList " " (include "emberprof.fileCapabilities" .) -}}
{{- if not (has $cap $.Values.capabilities) -}}
{{- fail (printf "capabilities must include %s: the image's binary carries it as a file capability, and a non-root exec fails with EPERM without it in the container's set. Add it, or set runAsUser: 0 to use the capabilities directly." $cap) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- /* File capabilities are privileges gained at exec; no_new_privs
       (allowPrivilegeEscalation: false) would discard them. Root needs no such gain. */ -}}
{{- $_ := merge $sc (dict "runAsUser" $uid "runAsGroup" $uid "runAsNonRoot" (ne $uid 0) "allowPrivilegeEscalation" (ne $uid 0)) -}}
{{- $_ := set $sc "capabilities" (dict "drop" (list "ALL") "add" .Values.capabilities) -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite $sc .Values.extraSecurityContext) -}}
{{- end -}}

{{/* The agent's config.yaml: only keys `emberprof config default` knows (plus k8s_opt_in). */}}
{{- define "emberprof.config" -}}
{{- $v := .Values -}}
{{- $c := dict
  "frequency" (int64 $v.frequency)
  "interval" $v.interval
  "http_listen" (printf "%s:%d" $v.http.host (int $v.http.port))
  "shutdown_timeout" $v.shutdownTimeout
  "unwind" $v.unwind.mode
  "unwind_table_mib" (int64 $v.unwind.tableMib)
  "no_python" (not $v.python.enabled)
-}}
{{- if $v.offCpu.enabled -}}
{{- $_ := merge $c (dict "off_cpu" true "include_preempted" $v.offCpu.includePreempted "min_block" $v.offCpu.minBlock) -}}
{{- end -}}
{{- if or $v.histograms.enabled $v.histograms.syscallLatency -}}
{{- $_ := merge $c (dict "histograms" true "syscall_latency" $v.histograms.syscallLatency "histogram_keys" (int64 $v.histograms.keys)) -}}
{{- end -}}
{{- with $v.probePoints.specs }}{{ $_ := merge $c (dict "probe" . "probe_max_rate" (int64 $v.probePoints.maxRate)) }}{{ end -}}
{{- if $v.tcp.enabled }}{{ $_ := set $c "tcp" true }}{{ end -}}
{{- with $v.filters.includeExe }}{{ $_ := set $c "include_exe" . }}{{ end -}}
{{- with $v.filters.excludeExe }}{{ $_ := set $c "exclude_exe" . }}{{ end -}}
{{- with $v.filters.includeCgroups }}{{ $_ := set $c "include_cgroup" . }}{{ end -}}
{{- with $v.filters.excludeCgroups }}{{ $_ := set $c "exclude_cgroup" . }}{{ end -}}
{{- /* Omitted when false so that an agent without the key still accepts the file. */ -}}
{{- if $v.kubernetes.optIn }}{{ $_ := set $c "k8s_opt_in" true }}{{ end -}}
{{- with $v.exporters.otlp -}}
{{- if .endpoint -}}
{{- $_ := merge $c (dict "otlp_endpoint" .endpoint "otlp_temporality" .temporality "otlp_queue_bytes" (int64 .queueBytes)) -}}
{{- with .compression }}{{ $_ := set $c "otlp_compression" . }}{{ end -}}
{{- with .timeout }}{{ $_ := set $c "otlp_timeout" . }}{{ end -}}
{{- with .headers }}{{ $_ := set $c "otlp_header" . }}{{ end -}}
{{- if .tls.secretName -}}
{{- with .tls.ca }}{{ $_ := set $c "otlp_ca" (printf "/etc/emberprof/tls/%s" .) }}{{ end -}}
{{- with .tls.clientCert }}{{ $_ := set $c "otlp_client_cert" (printf "/etc/emberprof/tls/%s" .) }}{{ end -}}
{{- with .tls.clientKey }}{{ $_ := set $c "otlp_client_key" (printf "/etc/emberprof/tls/%s" .) }}{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- with $v.exporters.pyroscope -}}
{{- if .url -}}
{{- $_ := set $c "pyroscope_url" .url -}}
{{- with .tenant }}{{ $_ := set $c "pyroscope_tenant" . }}{{ end -}}
{{- with .user }}{{ $_ := set $c "pyroscope_user" . }}{{ end -}}
{{- end -}}
{{- end -}}
{{- with $v.exporters.pprofDir -}}
{{- if .enabled -}}
{{- $_ := merge $c (dict "pprof_dir" "/var/lib/emberprof/pprof" "pprof_max_files" (int64 .maxFiles) "pprof_max_bytes" (int64 .maxBytes) "pprof_max_age" .maxAge) -}}
{{- end -}}
{{- end -}}
{{- if $v.debuginfod.urls -}}
{{- $_ := merge $c (dict "debuginfod_urls" $v.debuginfod.urls "debuginfod_cache" "/var/cache/emberprof/debuginfod") -}}
{{- end -}}
{{- if $v.debugPprof.enabled -}}
{{- $_ := set $c "debug_pprof" true -}}
{{- if include "emberprof.debugPprofToken" . -}}
{{- $_ := set $c "debug_pprof_token_file" (printf "%s/token" (include "emberprof.debugPprofTokenDir" .)) -}}
{{- end -}}
{{- end -}}
{{- $c = mustMergeOverwrite $c $v.extraConfig -}}
{{- /* Checked on the final configuration, extraConfig included: the agent would refuse it
       too, but only once running, in a crash loop. */ -}}
{{- $listen := toString (get $c "http_listen") -}}
{{- if and (get $c "debug_pprof") (not (get $c "debug_pprof_token_file")) (not (or (hasPrefix "127." $listen) (hasPrefix "[::1]:" $listen))) -}}
{{- fail (printf "debug_pprof on %s without a token would give profiles of the whole node to anyone who reaches the pod's port: set secret.debugPprofToken (with secret.create) or secret.existingSecret holding the key debug-pprof-token" $listen) -}}
{{- end -}}
{{- toYaml $c -}}
{{- end -}}

{{/* OTEL_RESOURCE_ATTRIBUTES: the node's name (expanded by the kubelet from NODE_NAME, which
     must come first in env), then the user's attributes, %-encoded as the variable requires. */}}
{{- define "emberprof.resourceAttributes" -}}
{{- $pairs := list "host.name=$(NODE_NAME)" "k8s.node.name=$(NODE_NAME)" -}}
{{- range $k, $v := .Values.resourceAttributes -}}
{{- $pairs = append $pairs (printf "%s=%s" $k (toString $v | replace "%" "%25" | replace "," "%2C" | replace " " "%20")) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
