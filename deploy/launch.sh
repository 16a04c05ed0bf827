#!/usr/bin/env bash
# Launch the EMMR scoring flex template on Dataflow: a batch run now, or the streaming job; drain the streaming job.
#
#   deploy/launch.sh batch        [--dry-run]   # one batch run (deploy/flex-template/launch-batch.json)
#   deploy/launch.sh streaming    [--dry-run]   # the streaming job (deploy/flex-template/launch-streaming.json)
#   deploy/launch.sh backfill FROM TO [--dry-run]  # one batch run per day, FROM..TO (YYYY-MM-DD, both included)
#   deploy/launch.sh update       [--dry-run]   # replace the running streaming job in place (Dataflow --update)
#   deploy/launch.sh drain        [JOB_NAME]    # drain the active streaming job (default emmr-streaming)
#
# `update` sends the streaming request with launchParameter.update = true and the transform name mapping of
# deploy/flex-template/transform-name-mapping.json (old name -> new name, for every transform renamed since the
# running job was launched; deploy/flex-template/transforms-streaming.txt lists today's names and the tests fail
# when one changes): Dataflow checks compatibility, moves the in-flight state and messages over, and the new job
# takes the old one's name. Rolling a model needs no update: the job follows MODEL_PATTERN (RUNBOOK.md).
# The request files hold every parameter; this script fills them from the environment (deploy/render_body.py)
# and POSTs them to the Dataflow API with the caller's gcloud login (nothing secret is stored here). The
# schedule (deploy/scheduler/schedule.sh) sends the same batch request, so a manual run and a scheduled one
# are the same job. --dry-run prints the URL and the request instead of sending it.
#
# Always:    PROJECT, REGION, TEMPLATE (gs://.../templates/emmr-score.json from build.sh), IMAGE (from build.sh),
#            TEMP_LOCATION (gs://bucket/tmp), MODEL (gs://.../checkpoint dir), DEAD_LETTER
# Batch:     INPUT (gs:// Parquet glob), OUTPUT (gs:// prefix): {date} in INPUT, OUTPUT and DEAD_LETTER is the
#            run's day (e.g. INPUT='gs://b/inbox/dt={date}/*.parquet'), RUN_DATE (default: today, UTC; backfill
#            sets it per day); each run's files carry its run id and a _SUCCESS (written last) lists them;
#            optional JOB_NAME (default emmr-score-daily: the
#            Pushgateway group and the alerts' job label). The launcher submits the job and returns; the response
#            names the job id: once the job has finished, `emmr-score report --job <id> --project P --region R
#            --pushgateway HOST:9091` summarises it from its committed metrics and pushes the summary (the schedule,
#            deploy/scheduler/, does this by itself)
# Streaming: SUBSCRIPTION (projects/P/subscriptions/S), OUTPUT_TOPIC and/or OUTPUT; DEAD_LETTER may be a topic;
#            optional MODEL_PATTERN (gs://.../models/*/checkpoint.json: swap to the newest checkpoint while
#            running), METRICS_PORT (default 9464), BATCH_DURATION_S, WINDOW_S, JOB_NAME (default emmr-streaming)
# Optional:  DEVICE (default cuda), BATCH_SIZE, MODEL_COPIES, MACHINE_TYPE (default g2-standard-8),
#            MAX_WORKERS, WORKER_THREADS (default 4), SERVICE_ACCOUNT, NETWORK, SUBNETWORK, IP_CONFIGURATION,
#            STAGING_LOCATION, DATAFLOW_SERVICE_OPTIONS (default: one nvidia-l4 per worker with the driver;
#            CPU-only: DEVICE=cpu DATAFLOW_SERVICE_OPTIONS=none MACHINE_TYPE=n2-standard-8)
#
# Equivalent gcloud command for a batch run, for reference (the request files are the source of truth):
#   gcloud dataflow flex-template run emmr-score-daily --region "$REGION" --template-file-gcs-location "$TEMPLATE" \
#     --worker-machine-type g2-standard-8 --max-workers 10 --temp-location "$TEMP_LOCATION" \
#     --additional-experiments no_use_multiple_sdk_containers \
#     --parameters "^~^input=$INPUT~output=$OUTPUT~dead_letter=$DEAD_LETTER~model=$MODEL~device=cuda~sdk_container_image=$IMAGE~sdk_location=container~dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

command="${1:-}"
[[ -n "$command" ]] || { usage >&2; exit 2; }
shift
dry_run=0 args=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    -h|--help) usage; exit 0 ;;
    *) args+=("$arg") ;;
  esac
done

need() {
  local missing=()
  for v in "$@"; do [[ -n "${!v:-}" ]] || missing+=("$v"); done
  if [[ ${#missing[@]} -gt 0 ]]; then echo "launch.sh: set ${missing[*]} (see --help)" >&2; exit 2; fi
}

launch() {  # launch REQUEST_FILE [update]
  need PROJECT REGION
  local body url
  body="$(python3 "$here/render_body.py" "$1")" || exit 2
  if [[ "${2:-}" == update ]]; then  # in place: the running job is replaced, its state carried over
    body="$(python3 -c 'import json, sys; b = json.loads(sys.argv[1]); m = json.load(open(sys.argv[2])); p = b["launchParameter"]; p["update"] = True; p["transformNameMappings"] = {k: v for k, v in m.items() if not k.startswith("#")}; json.dump(b, sys.stdout, indent=2)' "$body" "$here/flex-template/transform-name-mapping.json")"
  fi
  if [[ "${DATAFLOW_SERVICE_OPTIONS:-}" == none ]]; then  # CPU-only: no accelerator option at all
    body="$(python3 -c 'import json, sys; b = json.load(sys.stdin); b["launchParameter"]["parameters"].pop("dataflow_service_options"); json.dump(b, sys.stdout, indent=2)' <<<"$body")"
  fi
  url="https://dataflow.googleapis.com/v1b3/projects/${PROJECT}/locations/${REGION}/flexTemplates:launch"
  if [[ $dry_run -eq 1 ]]; then
    printf 'POST %s\n%s\n' "$url" "$body"
    return
  fi
  # The token reaches curl through a file descriptor, never on a command line that `ps` shows.
  curl -sS --fail-with-body -X POST "$url" \
    -H @<(printf 'Authorization: Bearer %s\n' "$(gcloud auth print-access-token)") \
    -H "Content-Type: application/json" --data-binary @- <<<"$body"
  echo
}

case "$command" in
  batch) launch "$here/flex-template/launch-batch.json" ;;
  streaming) launch "$here/flex-template/launch-streaming.json" ;;
  update) launch "$here/flex-template/launch-streaming.json" update ;;
  backfill)
    [[ ${#args[@]} -eq 2 ]] || { echo "launch.sh: backfill FROM TO (YYYY-MM-DD)" >&2; exit 2; }
    days="$(python3 -c 'import sys, datetime as d; a, b = (d.date.fromisoformat(x) for x in sys.argv[1:]); assert a <= b, "FROM after TO"; print(" ".join(str(a + d.timedelta(n)) for n in range((b - a).days + 1)))' "${args[0]}" "${args[1]}")" \
      || { echo "launch.sh: backfill FROM TO: two days as YYYY-MM-DD, FROM first" >&2; exit 2; }
    for day in $days; do  # one job per day, named by it; each summarised by `emmr-score report --job <id>` after
      RUN_DATE="$day" JOB_NAME="${JOB_NAME:-emmr-score-backfill}-${day//-/}" launch "$here/flex-template/launch-batch.json"
    done
    ;;
  drain)
    need PROJECT REGION
    name="${args[0]:-${JOB_NAME:-emmr-streaming}}"
    if [[ $dry_run -eq 1 ]]; then
      echo "gcloud dataflow jobs drain <id of the active job named $name> --project $PROJECT --region $REGION"; exit 0
    fi
    id="$(gcloud dataflow jobs list --project "$PROJECT" --region "$REGION" --status active \
            --filter "name=$name" --format 'value(id)' | head -n1)"
    [[ -n "$id" ]] || { echo "launch.sh: no active job named $name in $REGION" >&2; exit 1; }
    gcloud dataflow jobs drain "$id" --project "$PROJECT" --region "$REGION"
    ;;
  *) echo "launch.sh: unknown command $command (batch, backfill, streaming, update, drain)" >&2; exit 2 ;;
esac
