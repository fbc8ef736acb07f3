{{/* Names ------------------------------------------------------------------------------ */}}

{{- define "radreport.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "radreport.fullname" -}}
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

{{/* "<fullname>-<component>", at most 63 characters. Call with (dict "root" $ "component" "x"). */}}
{{- define "radreport.componentName" -}}
{{- printf "%s-%s" (include "radreport.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "radreport.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------------- */}}

{{- define "radreport.selectorLabels" -}}
app.kubernetes.io/name: {{ include "radreport.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "radreport.labels" -}}
helm.sh/chart: {{ include "radreport.chart" . }}
{{ include "radreport.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: radreport
{{- end }}

{{/* Call with (dict "root" $ "component" "gateway"). */}}
{{- define "radreport.componentSelectorLabels" -}}
{{ include "radreport.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "radreport.componentLabels" -}}
{{ include "radreport.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Images ----------------------------------------------------------------------------- */}}

{{/* The runtime image (gateway, DICOM gateway, workers). */}}
{{- define "radreport.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Call with an image block: repository, tag. */}}
{{- define "radreport.imageOf" -}}
{{- printf "%s:%s" .repository .tag }}
{{- end }}

{{- define "radreport.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "radreport.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "radreport.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secrets and addresses -------------------------------------------------------------- */}}

{{/* The Secret holding database-url and redis-url (and the bundled servers' passwords). */}}
{{- define "radreport.secretName" -}}
{{- default (include "radreport.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "radreport.redisHost" -}}
{{- include "radreport.componentName" (dict "root" . "component" "redis") }}
{{- end }}

{{- define "radreport.postgresqlHost" -}}
{{- include "radreport.componentName" (dict "root" . "component" "postgresql") }}
{{- end }}

{{- define "radreport.tritonUrl" -}}
{{- if .Values.triton.enabled }}
{{- printf "%s:%d" (include "radreport.componentName" (dict "root" . "component" "triton")) (int .Values.triton.ports.grpc) }}
{{- else }}
{{- required "triton.externalUrl is required when triton.enabled is false" .Values.triton.externalUrl }}
{{- end }}
{{- end }}

{{- define "radreport.blobClaimName" -}}
{{- default (include "radreport.componentName" (dict "root" . "component" "blobs")) .Values.blobs.persistence.existingClaim }}
{{- end }}

{{/* Pod pieces shared by the gateway, the DICOM gateway and the workers ------------------- */}}

{{/* Environment of every radreport container: the ConfigMap, then the two URLs from the Secret. */}}
{{- define "radreport.appEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "radreport.fullname" . }}
env:
  - name: RADREPORT_DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "radreport.secretName" . }}
        key: {{ .Values.secretKeys.databaseUrl }}
  - name: RADREPORT_REDIS_URL
    valueFrom:
      secretKeyRef:
        name: {{ include "radreport.secretName" . }}
        key: {{ .Values.secretKeys.redisUrl }}
{{- end }}

{{/* Roll pods when the settings or the URLs change. The Secret's checksum is taken over the
values it is made from, not over its text: generated passwords must not roll pods. */}}
{{- define "radreport.secretChecksum" -}}
{{- list .Values.existingSecret .Values.secretKeys .Values.postgresql.enabled .Values.postgresql.password .Values.redis.enabled .Values.redis.password .Values.externalDatabase.url .Values.externalRedis.url | toJson | sha256sum }}
{{- end }}

{{- define "radreport.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include "radreport.secretChecksum" . }}
{{- end }}

{{/* The volumes every radreport pod mounts: the shared blob volume and a writable /tmp. */}}
{{- define "radreport.appVolumes" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "radreport.blobClaimName" . }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{- define "radreport.appVolumeMounts" -}}
- name: data
  mountPath: {{ .Values.config.dataDir }}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* One pipeline worker's Deployment and metrics Service. Call with (dict "root" $ "worker" "preprocess"). */}}
{{- define "radreport.worker" -}}
{{- $root := .root -}}
{{- $name := .worker -}}
{{- $worker := index $root.Values.workers $name -}}
{{- $component := printf "worker-%s" $name -}}
{{- $ctx := dict "root" $root "component" $component -}}
{{- if $worker.enabled }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "radreport.componentName" $ctx }}
  labels:
    {{- include "radreport.componentLabels" $ctx | nindent 4 }}
    radreport.io/tier: app
spec:
  {{- if not (or $worker.autoscaling.enabled $root.Values.keda.enabled) }}
  replicas: {{ $worker.replicas }}
  {{- end }}
  revisionHistoryLimit: 3
  selector:
    matchLabels:
      {{- include "radreport.componentSelectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "radreport.componentSelectorLabels" $ctx | nindent 8 }}
        radreport.io/tier: app
      annotations:
        {{- include "radreport.configChecksums" $root | nindent 8 }}
        {{- with $worker.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- with include "radreport.imagePullSecrets" $root | trim }}{{ . | nindent 6 }}{{ end }}
      serviceAccountName: {{ include "radreport.serviceAccountName" $root }}
      automountServiceAccountToken: false
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      # A task in flight is acknowledged late: a worker stopped mid-task hands it back.
      terminationGracePeriodSeconds: {{ $root.Values.workers.terminationGracePeriodSeconds }}
      containers:
        - name: worker
          image: {{ include "radreport.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["python", "-m", "services.{{ $name }}", "--concurrency", "{{ $worker.concurrency }}",
                 "--loglevel", "{{ $root.Values.workers.logLevel }}"]
          {{- include "radreport.appEnv" $root | nindent 10 }}
          ports:
            - name: metrics
              containerPort: {{ $root.Values.workers.metricsPort }}
              protocol: TCP
          livenessProbe:
            tcpSocket:
              port: metrics
            {{- toYaml $root.Values.workers.livenessProbe | nindent 12 }}
          resources:
            {{- toYaml $worker.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.containerSecurityContext | nindent 12 }}
          volumeMounts:
            {{- include "radreport.appVolumeMounts" $root | nindent 12 }}
      volumes:
        {{- include "radreport.appVolumes" $root | nindent 8 }}
      {{- with $worker.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $worker.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $worker.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "radreport.componentName" $ctx }}
  labels:
    {{- include "radreport.componentLabels" $ctx | nindent 4 }}
    radreport.io/job: workers
spec:
  type: ClusterIP
  selector:
    {{- include "radreport.componentSelectorLabels" $ctx | nindent 4 }}
  ports:
    - name: metrics
      port: {{ $root.Values.workers.metricsPort }}
      targetPort: metrics
      protocol: TCP
{{- end }}
{{- end }}
