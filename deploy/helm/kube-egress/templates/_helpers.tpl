{{/*
The prefix of every object name: the release name when it already holds the chart name
("kube-egress" gives the names of deploy/kubernetes/), else "<release>-kube-egress".
*/}}
{{- define "kube-egress.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select a component's pods: (list $ "controller"); "" for shared objects. */}}
{{- define "kube-egress.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
{{- with index . 1 }}
app.kubernetes.io/component: {{ . }}
{{- end -}}
{{- end -}}

{{/* Every object's labels: the selector labels and Helm's own. */}}
{{- define "kube-egress.labels" -}}
{{- $root := index . 0 -}}
{{ include "kube-egress.selectorLabels" . }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
{{- end -}}

{{- define "kube-egress.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "kube-egress.leaseName" -}}
{{ .Values.controller.leaseName | default (printf "%s-controller" (include "kube-egress.fullname" .)) }}
{{- end -}}

{{/* Prometheus scrape annotations for a metrics port. */}}
{{- define "kube-egress.prometheusAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ . | quote }}
prometheus.io/path: /metrics
{{- end -}}
