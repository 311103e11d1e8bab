{{- define "globalbrain.labels" -}}
app.kubernetes.io/part-of: globalbrain
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{/* Environment shared by every service: auth, catalog, object store, logs. */}}
{{- define "globalbrain.commonEnv" -}}
- name: GBRAIN_AUTH_FILE
  value: /etc/gbrain/auth/{{ .Values.auth.key }}
- name: GBRAIN_CATALOG
  valueFrom:
    secretKeyRef:
      name: {{ .Values.catalog.existingSecret }}
      key: {{ .Values.catalog.urlKey }}
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
- name: GBRAIN_LOG_FORMAT
  value: json
- name: GBRAIN_LISTEN
  value: "0.0.0.0:50051"
- name: GBRAIN_HTTP
  value: "0.0.0.0:8080"
{{- end -}}
