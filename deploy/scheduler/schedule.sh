#!/usr/bin/env bash
# Create (or update) the recurring batch run: a Cloud Scheduler job that starts the Cloud Workflow
# deploy/scheduler/workflow.yaml daily. The workflow launches deploy/flex-template/launch-batch.json (the same
# request as `deploy/launch.sh batch`), waits for the Dataflow job, then runs `emmr-score report --job <id>` in
# a Cloud Run job (the job's committed metrics -> summary, conservation check, Pushgateway push).
#
#   deploy/scheduler/schedule.sh [--dry-run]     # --dry-run prints the commands and the workflow argument
#
# Environment: everything deploy/launch.sh needs for `batch` (PROJECT, REGION, TEMPLATE, IMAGE, TEMP_LOCATION,
# MODEL, INPUT, OUTPUT, DEAD_LETTER, ...), plus
#   SCHEDULER_SERVICE_ACCOUNT  runs the workflow and the report: roles/dataflow.developer (launch, read the job and
#                              its metrics), roles/iam.serviceAccountUser on the workers' service account,
#                              roles/run.developer, roles/workflows.invoker, and read access to MODEL (required)
#   PUSHGATEWAY                host:port of the Pushgateway, reachable from the report job's network (required)
#   SCHEDULE                   cron, default "0 3 * * *" (daily 03:00); the alert EmmrBatchRunOverdue expects a
#                              run at least every 26 h: change both together
#   TIME_ZONE                  default Etc/UTC
#   SCHEDULER_JOB              default emmr-score-daily (also the workflow's name)
#   REPORT_JOB                 the Cloud Run job running the report, default emmr-score-report
#   NETWORK, SUBNETWORK        the report job's VPC (direct VPC egress), to reach PUSHGATEWAY
#   POLL_S                     seconds between the workflow's polls of the Dataflow job, default 60
# Each run is for the day it starts (UTC): {date} in INPUT, OUTPUT and DEAD_LETTER becomes that day, e.g.
# INPUT='gs://b/inbox/dt={date}/*.parquet' OUTPUT='gs://b/predictions/dt={date}/part' (deploy/RUNBOOK.md, "The
# scheduled batch run"); `deploy/launch.sh backfill FROM TO` reruns a range of days.
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
for v in PROJECT REGION SCHEDULER_SERVICE_ACCOUNT PUSHGATEWAY IMAGE; do [[ -n "${!v:-}" ]] || missing+=("$v"); done
if [[ ${#missing[@]} -gt 0 ]]; then echo "schedule.sh: set ${missing[*]} (see --help)" >&2; exit 2; fi

SCHEDULER_JOB="${SCHEDULER_JOB:-emmr-score-daily}"
REPORT_JOB="${REPORT_JOB:-emmr-score-report}"
SCHEDULE="${SCHEDULE:-0 3 * * *}"
TIME_ZONE="${TIME_ZONE:-Etc/UTC}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 "$here/render_body.py" "$here/flex-template/launch-batch.json" >"$work/launch.json" || exit 2
# The Scheduler job's body: {"argument": "<the workflow's argument, as a JSON string>"}.
python3 - "$work/launch.json" "$REGION" "$REPORT_JOB" "$PUSHGATEWAY" "${POLL_S:-60}" >"$work/body.json" <<'EOF'
import json, sys
launch, region, report_job, pushgateway, poll_s = sys.argv[1:]
argument = {"launch": json.load(open(launch)), "region": region, "report_job": report_job,
            "pushgateway": pushgateway, "poll_s": int(poll_s)}
json.dump({"argument": json.dumps(argument)}, sys.stdout, indent=2)
EOF

report_cmd=(gcloud run jobs deploy "$REPORT_JOB" --project "$PROJECT" --region "$REGION" --image "$IMAGE"
            --command emmr-score --args report --service-account "$SCHEDULER_SERVICE_ACCOUNT"
            --task-timeout 20m --max-retries 2 --memory 2Gi)
[[ -n "${NETWORK:-}" ]] && report_cmd+=(--network "$NETWORK")
[[ -n "${SUBNETWORK:-}" ]] && report_cmd+=(--subnet "$SUBNETWORK" --vpc-egress private-ranges-only)
workflow_cmd=(gcloud workflows deploy "$SCHEDULER_JOB" --project "$PROJECT" --location "$REGION"
              --source "$here/scheduler/workflow.yaml" --service-account "$SCHEDULER_SERVICE_ACCOUNT")
url="https://workflowexecutions.googleapis.com/v1/projects/${PROJECT}/locations/${REGION}/workflows/${SCHEDULER_JOB}/executions"
verb=create
if [[ $dry_run -eq 0 ]] && gcloud scheduler jobs describe "$SCHEDULER_JOB" --project "$PROJECT" --location "$REGION" >/dev/null 2>&1; then
  verb=update
fi
scheduler_cmd=(gcloud scheduler jobs "$verb" http "$SCHEDULER_JOB" --project "$PROJECT" --location "$REGION"
               --schedule "$SCHEDULE" --time-zone "$TIME_ZONE" --uri "$url" --http-method POST
               --oauth-service-account-email "$SCHEDULER_SERVICE_ACCOUNT"
               --oauth-token-scope https://www.googleapis.com/auth/cloud-platform
               --attempt-deadline 300s --max-retry-attempts 3 --min-backoff 5m
               --message-body-from-file "$work/body.json")
if [[ "$verb" == create ]]; then scheduler_cmd+=(--headers Content-Type=application/json); else scheduler_cmd+=(--update-headers Content-Type=application/json); fi

step() { printf '+'; printf ' %q' "$@"; printf '\n'; [[ $dry_run -eq 1 ]] || "$@"; }
step "${report_cmd[@]}"
step "${workflow_cmd[@]}"
step "${scheduler_cmd[@]}"
if [[ $dry_run -eq 1 ]]; then cat "$work/body.json"; echo; fi
