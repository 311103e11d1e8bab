{{/* Labels every object of the release carries. */}}
{{- define "globalbrain.labels" -}}
app.kubernetes.io/name: globalbrain
app.kubernetes.io/part-of: globalbrain
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/* Selector of one component's pods: (dict "root" $ "component" "ingest"). */}}
{{- define "globalbrain.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The image, with a component's override when it has one: (dict "root" $ "image" .image). */}}
{{- define "globalbrain.image" -}}
{{- $repo := .root.Values.image.repository -}}
{{- $tag := .root.Values.image.tag -}}
{{- with .image -}}
{{- if .repository }}{{ $repo = .repository }}{{ end -}}
{{- if .tag }}{{ $tag = .tag }}{{ end -}}
{{- end -}}
{{ printf "%s:%s" $repo $tag | quote }}
{{- end -}}

{{/* Pod-level settings shared by every component. */}}
{{- define "globalbrain.podSpec" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Environment shared by every service: the listeners, logs, auth file, catalog and object store.
Each is a flag of `gbrain serve <role>` read from its GBRAIN_* variable; S3 settings are the
AWS_* variables the object store reads. With tls.enabled the gRPC port speaks TLS (mutual with
tls.mutual) and grpc.health.v1 alone is served in plaintext on tls.healthPort, for the probes.
*/}}
{{- define "globalbrain.serverEnv" -}}
- name: GBRAIN_LISTEN
  value: "0.0.0.0:50051"
- name: GBRAIN_HTTP
  value: "0.0.0.0:8080"
- name: GBRAIN_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: GBRAIN_AUTH_FILE
  value: /etc/gbrain/auth/{{ .Values.auth.key }}
{{- with .Values.tls }}
{{- if .enabled }}
- name: GBRAIN_TLS_CERT
  value: {{ printf "/etc/gbrain/tls/%s" .certKey | quote }}
- name: GBRAIN_TLS_KEY
  value: {{ printf "/etc/gbrain/tls/%s" .keyKey | quote }}
{{- if .mutual }}
- name: GBRAIN_TLS_CLIENT_CA
  value: {{ printf "/etc/gbrain/tls/%s" .caKey | quote }}
{{- end }}
- name: GBRAIN_HEALTH_LISTEN
  value: {{ printf "0.0.0.0:%d" (int .healthPort) | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
A client's TLS (with tls.enabled), for the coordinator's connections to ingest and the
inference nodes: it trusts the CA of the Secret and, under mutual TLS, presents the pod's own
certificate (which must allow client authentication).
*/}}
{{- define "globalbrain.clientTlsEnv" -}}
{{- with .Values.tls -}}
- name: GBRAIN_TLS_CA
  value: {{ printf "/etc/gbrain/tls/%s" .caKey | quote }}
{{- if .mutual }}
- name: GBRAIN_TLS_CLIENT_CERT
  value: {{ printf "/etc/gbrain/tls/%s" .certKey | quote }}
- name: GBRAIN_TLS_CLIENT_KEY
  value: {{ printf "/etc/gbrain/tls/%s" .keyKey | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The scheme of the services' gRPC endpoints: https:// with TLS. */}}
{{- define "globalbrain.grpcScheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end -}}
{{- end -}}

{{- define "globalbrain.catalogEnv" -}}
- name: GBRAIN_CATALOG
  valueFrom:
    secretKeyRef:
      name: {{ .Values.catalog.existingSecret }}
      key: {{ .Values.catalog.urlKey }}
{{- end -}}

{{- define "globalbrain.objectStoreEnv" -}}
- name: GBRAIN_OBJECT_STORE
  value: {{ .Values.objectStore.url | quote }}
- name: AWS_REGION
  value: {{ .Values.objectStore.region | quote }}
{{- with .Values.objectStore.endpoint }}
- name: AWS_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: AWS_ALLOW_HTTP
  value: {{ .Values.objectStore.allowHttp | quote }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.existingSecret }}
      key: {{ .Values.objectStore.accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.objectStore.existingSecret }}
      key: {{ .Values.objectStore.secretAccessKeyKey }}
{{- end -}}

{{/*
The Secrets mounted in every service: the auth file and, with tls.enabled, the certificate,
key and CA. Directories, not subPaths, so that an updated Secret reaches the files (the
services reload the auth file; a new certificate takes a restart).
*/}}
{{- define "globalbrain.volumes" -}}
- name: auth
  secret:
    secretName: {{ .Values.auth.existingSecret }}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ .Values.tls.existingSecret }}
{{- end }}
{{- end -}}

{{- define "globalbrain.volumeMounts" -}}
- { name: auth, mountPath: /etc/gbrain/auth, readOnly: true }
{{- if .Values.tls.enabled }}
- { name: tls, mountPath: /etc/gbrain/tls, readOnly: true }
{{- end }}
{{- end -}}

{{- define "globalbrain.ports" -}}
- { name: grpc, containerPort: 50051 }
- { name: metrics, containerPort: 8080 }
{{- if .Values.tls.enabled }}
- { name: health, containerPort: {{ int .Values.tls.healthPort }} }
{{- end }}
{{- end -}}

{{/*
Native gRPC probes (grpc.health.v1.Health, Kubernetes 1.24 and later):
(dict "root" $ "ready" "<service SERVING once the pod takes work>" "live" "<service>"); a
missing name means the server's overall status ("").
They ask the gRPC port, or with tls.enabled the plaintext health port, which reports the same
statuses: the kubelet's gRPC probes speak neither TLS nor mutual TLS.
Every service reports NOT_SERVING from SIGTERM on, so readiness drops before the listener
closes; the kubelet stops liveness probes of a terminating pod.
*/}}
{{- define "globalbrain.probes" -}}
{{- $port := 50051 }}
{{- if .root.Values.tls.enabled }}{{ $port = int .root.Values.tls.healthPort }}{{ end -}}
readinessProbe:
  grpc: { port: {{ $port }}{{ with .ready }}, service: {{ . }}{{ end }} }
  periodSeconds: 5
livenessProbe:
  grpc: { port: {{ $port }}{{ with .live }}, service: {{ . }}{{ end }} }
  periodSeconds: 10
  failureThreshold: 3
{{- end -}}

{{/* Scheduling: (dict "nodeSelector" ... "tolerations" ... "affinity" ...). */}}
{{- define "globalbrain.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A component's Service: (dict "root" $ "component" "query"). */}}
{{- define "globalbrain.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ .root.Release.Name }}-{{ .component }}
  labels:
    {{- include "globalbrain.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  selector:
    {{- include "globalbrain.selector" . | nindent 4 }}
  ports:
    - { name: grpc, port: 50051, targetPort: grpc, appProtocol: grpc }
    - { name: metrics, port: 8080, targetPort: metrics }
{{- end -}}

{{/* A component's PodDisruptionBudget: (dict "root" $ "component" "query" "pdb" .podDisruptionBudget). */}}
{{- define "globalbrain.pdb" -}}
{{- if .pdb.enabled }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .root.Release.Name }}-{{ .component }}
  labels:
    {{- include "globalbrain.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if hasKey .pdb "maxUnavailable" }}
  maxUnavailable: {{ .pdb.maxUnavailable }}
  {{- else }}
  minAvailable: {{ .pdb.minAvailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "globalbrain.selector" . | nindent 6 }}
{{- end }}
{{- end -}}
