{{/* Names, labels and image references shared by every template. */}}

{{- define "hyper2kvm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: prefix of every object the chart creates. */}}
{{- define "hyper2kvm.fullname" -}}
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

{{- define "hyper2kvm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. No timestamps or random values: renders are reproducible. */}}
{{- define "hyper2kvm.labels" -}}
helm.sh/chart: {{ include "hyper2kvm.chart" . }}
{{ include "hyper2kvm.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hyper2kvm
{{- end }}

{{/* The operator Pods' identity: the Deployment selector and the Service select on it. */}}
{{- define "hyper2kvm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hyper2kvm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "hyper2kvm.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hyper2kvm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest]; the tag defaults to the chart's appVersion. */}}
{{- define "hyper2kvm.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "hyper2kvm.operatorImage" -}}
{{- include "hyper2kvm.image" (dict "root" . "image" .Values.operator.image) }}
{{- end }}

{{- define "hyper2kvm.workerImage" -}}
{{- include "hyper2kvm.image" (dict "root" . "image" .Values.worker.image) }}
{{- end }}

{{/* Claim names of the data volumes: the existing claim, else the chart-created one. */}}
{{- define "hyper2kvm.claimName" -}}
{{- if .volume.existingClaim }}
{{- .volume.existingClaim }}
{{- else }}
{{- printf "%s-%s" (include "hyper2kvm.fullname" .root) .kind }}
{{- end }}
{{- end }}

{{/* Names of a list of {name: ...} pull secrets, space-separated. */}}
{{- define "hyper2kvm.secretNames" -}}
{{- $names := list }}
{{- range . }}{{ $names = append $names .name }}{{ end }}
{{- join " " $names }}
{{- end }}
