{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "delegate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "delegate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "delegate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Where sandboxes run: sandbox.namespace, else the release's namespace. */}}
{{- define "delegate.sandboxNamespace" -}}
{{- default .Release.Namespace .Values.sandbox.namespace -}}
{{- end -}}

{{/* The sandbox NetworkPolicy's name (copied into each workspace namespace by the server). */}}
{{- define "delegate.sandboxPolicyName" -}}
{{- printf "%s-sandboxes" (include "delegate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "delegate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "delegate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret the server's secret settings come from. */}}
{{- define "delegate.secretName" -}}
{{- default (include "delegate.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{- define "delegate.postgresName" -}}
{{- printf "%s-postgresql" (include "delegate.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* DATABASE_URL: the bundled PostgreSQL's when it is on, else secrets.databaseUrl. */}}
{{- define "delegate.databaseUrl" -}}
{{- if .Values.postgresql.enabled -}}
{{- printf "postgres://%s:%s@%s:5432/%s" (.Values.postgresql.username | urlquery) (.Values.postgresql.password | urlquery) (include "delegate.postgresName" .) .Values.postgresql.database -}}
{{- else -}}
{{- .Values.secrets.databaseUrl -}}
{{- end -}}
{{- end -}}
