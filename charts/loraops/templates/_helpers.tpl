{{- define "loraops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "loraops.fullname" -}}
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

{{- define "loraops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "loraops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loraops
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "operator") */}}
{{- define "loraops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loraops.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loraops.componentLabels" -}}
{{ include "loraops.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "loraops.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "loraops.agentImage" -}}
{{- $repo := default .Values.image.repository .Values.agent.image.repository -}}
{{- $tag := default (default .Chart.AppVersion .Values.image.tag) .Values.agent.image.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "loraops.operatorServiceAccount" -}}
{{- default (printf "%s-operator" (include "loraops.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "loraops.routerServiceAccount" -}}
{{- default (printf "%s-router" (include "loraops.fullname" .)) .Values.router.serviceAccount.name -}}
{{- end -}}

{{- define "loraops.peering" -}}
{{- if or (gt (int .Values.operator.replicas) 1) .Values.operator.peering.enabled -}}true{{- end -}}
{{- end -}}

{{- define "loraops.checks" -}}
{{- if and .Values.rbac.namespaced (not .Values.watchNamespaces) -}}
{{- fail "rbac.namespaced: true needs watchNamespaces (the namespaces whose Roles to create)" -}}
{{- end -}}
{{- end -}}

{{/* The operator's rules, shared by its ClusterRole and its per-namespace Roles. No wildcard, no Secrets. */}}
{{- define "loraops.operatorRules" -}}
- apiGroups: [loraops.io]
  resources: [loratrainings, loraadapters, adapterroutes]
  verbs: [get, list, watch, create, patch]
- apiGroups: [loraops.io]
  resources: [loratrainings/status, loraadapters/status, adapterroutes/status]
  verbs: [get, patch, update]
- apiGroups: [loraops.io]
  resources: [loratrainings/finalizers, loraadapters/finalizers, adapterroutes/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, delete]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, patch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
{{- end -}}

{{- define "loraops.routerRules" -}}
- apiGroups: [loraops.io]
  resources: [adapterroutes]
  verbs: [get, list, watch]
{{- end -}}

{{/* --router-metrics-url values (a JSON list): explicit, or the router Service when it has one replica. */}}
{{- define "loraops.routerMetricsUrls" -}}
{{- if .Values.operator.routerMetricsUrls -}}
{{- toJson .Values.operator.routerMetricsUrls -}}
{{- else if and .Values.router.enabled (eq (int .Values.router.replicas) 1) (not .Values.router.autoscaling.enabled) -}}
{{- list (printf "http://%s-router.%s.svc:%v/metrics" (include "loraops.fullname" .) .Release.Namespace .Values.router.service.port) | toJson -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}
