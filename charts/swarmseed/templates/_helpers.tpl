{{/*
Name prefix of every object: fullnameOverride, else the release name when it
already says "swarmseed", else "<release>-swarmseed". DNS labels are at most
63 characters; suffixes such as "-control-token" need room, hence 40.
*/}}
{{- define "swarmseed.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains "swarmseed" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-swarmseed" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "swarmseed.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Standard labels. app.kubernetes.io/name is fixed to "swarmseed": the operator
selects its agents by app.kubernetes.io/name=swarmseed and
app.kubernetes.io/component=agent.
*/}}
{{- define "swarmseed.labels" -}}
helm.sh/chart: {{ include "swarmseed.chart" . }}
app.kubernetes.io/name: swarmseed
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: swarmseed
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "agent"). */}}
{{- define "swarmseed.selectorLabels" -}}
app.kubernetes.io/name: swarmseed
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of one component's objects: (dict "ctx" $ "component" "agent"). */}}
{{- define "swarmseed.componentLabels" -}}
{{ include "swarmseed.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "swarmseed.operator.fullname" -}}
{{- printf "%s-operator" (include "swarmseed.fullname" .) -}}
{{- end -}}

{{- define "swarmseed.agent.fullname" -}}
{{- printf "%s-agent" (include "swarmseed.fullname" .) -}}
{{- end -}}

{{- define "swarmseed.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "swarmseed.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "swarmseed.agent.serviceAccountName" -}}
{{- if .Values.agent.serviceAccount.create -}}
{{- default (include "swarmseed.agent.fullname" .) .Values.agent.serviceAccount.name -}}
{{- else -}}
{{- required "agent.serviceAccount.name is required when agent.serviceAccount.create is false" .Values.agent.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "swarmseed.leaseName" -}}
{{- default (include "swarmseed.operator.fullname" .) .Values.operator.leaderElection.leaseName -}}
{{- end -}}

{{/* The Secret holding the control token and the key inside it. */}}
{{- define "swarmseed.controlTokenSecretName" -}}
{{- default (printf "%s-control-token" (include "swarmseed.fullname" .)) .Values.controlToken.existingSecret -}}
{{- end -}}

{{- define "swarmseed.controlTokenKey" -}}
{{- required "controlToken.existingSecretKey must not be empty" .Values.controlToken.existingSecretKey -}}
{{- end -}}

{{/* Where both binaries find the token file. */}}
{{- define "swarmseed.controlTokenDir" -}}/etc/swarmseed/control-token{{- end -}}

{{/* image reference: (dict "image" .Values.agent.image "ctx" $) */}}
{{- define "swarmseed.image" -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}
