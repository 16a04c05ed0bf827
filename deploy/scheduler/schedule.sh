#!/usr/bin/env bash
# Create (or update) the Cloud Scheduler job that launches the recurring batch run: an HTTP POST of
# deploy/flex-template/launch-batch.json (the same request as `deploy/launch.sh batch`) to the Dataflow
# flexTemplates:launch API, authenticated as SCHEDULER_SERVICE_ACCOUNT.
#
#   deploy/scheduler/schedule.sh [--dry-run]
#
# Environment: everything deploy/launch.sh needs for `batch` (PROJECT, REGION, TEMPLATE, IMAGE, TEMP_LOCATION,
# MODEL, INPUT, OUTPUT, DEAD_LETTER, optional PUSHGATEWAY, ...), plus
#   SCHEDULER_SERVICE_ACCOUNT  service account that calls the API: roles/dataflow.developer, and
#                              roles/iam.serviceAccountUser on the workers' service account   (required)
#   SCHEDULE                   cron, default "0 3 * * *" (daily 03:00); the alert EmmrBatchRunOverdue expects a
#                              run at least every 26 h: change both together
#   TIME_ZONE                  default Etc/UTC
#   SCHEDULER_JOB              default emmr-score-daily
# The request body is static: the run reads INPUT (a glob) and writes OUTPUT and DEAD_LETTER (prefixes) as
# given, every time. Point INPUT at where the day's files land and archive them after a successful run
# (deploy/RUNBOOK.md, "The scheduled batch run").
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dry_run=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "schedule.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done
missing=()
for v in PROJECT REGION SCHEDULER_SERVICE_ACCOUNT; do [[ -n "${!v:-}" ]] || missing+=("$v"); done
if [[ ${#missing[@]} -gt 0 ]]; then echo "schedule.sh: set ${missing[*]} (see --help)" >&2; exit 2; fi

SCHEDULER_JOB="${SCHEDULER_JOB:-emmr-score-daily}"
SCHEDULE="${SCHEDULE:-0 3 * * *}"
TIME_ZONE="${TIME_ZONE:-Etc/UTC}"
body_file="$(mktemp)"
trap 'rm -f "$body_file"' EXIT
python3 "$here/render_body.py" "$here/flex-template/launch-batch.json" >"$body_file" || exit 2
url="https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}/flexTemplates:launch"

verb=create
if [[ $dry_run -eq 0 ]] && gcloud scheduler jobs describe "$SCHEDULER_JOB" --project "$PROJECT" --location "$REGION" >/dev/null 2>&1; then
  verb=update
fi
cmd=(gcloud scheduler jobs "$verb" http "$SCHEDULER_JOB" --project "$PROJECT" --location "$REGION"
     --schedule "$SCHEDULE" --time-zone "$TIME_ZONE" --uri "$url" --http-method POST
     --oauth-service-account-email "$SCHEDULER_SERVICE_ACCOUNT"
     --oauth-token-scope https://www.googleapis.com/auth/cloud-platform
     --attempt-deadline 300s --max-retry-attempts 3 --min-backoff 5m
     --message-body-from-file "$body_file")
if [[ "$verb" == create ]]; then cmd+=(--headers Content-Type=application/json); else cmd+=(--update-headers Content-Type=application/json); fi
printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'
if [[ $dry_run -eq 1 ]]; then cat "$body_file"; exit 0; fi
"${cmd[@]}"
