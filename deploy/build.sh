#!/usr/bin/env bash
# Build the EMMR scoring image (GPU worker + flex-template launcher) and the flex template spec that points at it.
#
#   PROJECT=my-project REGION=us-central1 TEMPLATE_BUCKET=gs://my-bucket deploy/build.sh            # Cloud Build
#   PROJECT=my-project REGION=us-central1 TEMPLATE_BUCKET=gs://my-bucket deploy/build.sh --local    # docker buildx
#   deploy/build.sh --dry-run    # print the commands only (tests/test_deploy.py runs this)
#
# Environment (no credentials here: gcloud and docker use the caller's own login):
#   PROJECT           Google Cloud project                                  (required)
#   REGION            Artifact Registry and Dataflow region                 (required)
#   TEMPLATE_BUCKET   gs://bucket[/path] that receives templates/emmr-score.json   (required)
#   REPOSITORY        Artifact Registry Docker repository                   (default: emmr)
#   IMAGE_NAME        image name in that repository                         (default: emmr-score)
#   TAG               image tag                                             (default: the git commit, short)
#   LAUNCHER_IMAGE    flex-template launcher base, pin it by digest         (default: the Dockerfile's)
# It prints the image and template paths to give to deploy/launch.sh (IMAGE, TEMPLATE).
#
# BEAM_VERSION is read from setup.py (deploy/versions.py) and passed as a build argument: the Dockerfile has no
# copy of it.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=cloudbuild dry_run=0
for arg in "$@"; do
  case "$arg" in
    --local) mode=local ;;
    --dry-run) dry_run=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done

run() {  # print a command, shell-quoted, then run it unless --dry-run
  printf '+'; printf ' %q' "$@"; printf '\n'
  if [[ $dry_run -eq 0 ]]; then "$@"; fi
}

need() {
  local missing=()
  for v in "$@"; do [[ -n "${!v:-}" ]] || missing+=("$v"); done
  if [[ ${#missing[@]} -gt 0 ]]; then echo "build.sh: set ${missing[*]} (see --help)" >&2; exit 2; fi
}

need PROJECT REGION TEMPLATE_BUCKET
BEAM_VERSION="$(python3 deploy/versions.py beam)"
REPOSITORY="${REPOSITORY:-emmr}"
IMAGE_NAME="${IMAGE_NAME:-emmr-score}"
TAG="${TAG:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo dev)}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/${IMAGE_NAME}:${TAG}"
TEMPLATE="${TEMPLATE_BUCKET%/}/templates/emmr-score.json"
build_args=(--build-arg "BEAM_VERSION=${BEAM_VERSION}")
if [[ -n "${LAUNCHER_IMAGE:-}" ]]; then build_args+=(--build-arg "LAUNCHER_IMAGE=${LAUNCHER_IMAGE}"); fi

# The template's parameters must match the options class (the test suite checks this too).
if [[ -x .venv/bin/python ]]; then
  .venv/bin/python deploy/make_template_metadata.py --check >/dev/null \
    || { echo "build.sh: deploy/flex-template/metadata.json is out of date: run .venv/bin/python deploy/make_template_metadata.py" >&2; exit 1; }
fi

echo "build.sh: Beam ${BEAM_VERSION} (setup.py), image ${IMAGE}" >&2
if [[ $mode == local ]]; then
  run docker buildx build --platform linux/amd64 -f deploy/Dockerfile "${build_args[@]}" -t "$IMAGE" --push .
else
  # Cloud Build runs the same docker build; deploy/.gcloudignore keeps the upload to what the image needs.
  substitutions="_IMAGE=${IMAGE},_BEAM_VERSION=${BEAM_VERSION}"
  if [[ -n "${LAUNCHER_IMAGE:-}" ]]; then substitutions+=",_LAUNCHER_IMAGE=${LAUNCHER_IMAGE}"; fi
  run gcloud builds submit --project "$PROJECT" --region "$REGION" --config deploy/cloudbuild.yaml \
    --ignore-file deploy/.gcloudignore --substitutions "$substitutions" .
fi

run gcloud dataflow flex-template build "$TEMPLATE" --project "$PROJECT" \
  --image "$IMAGE" --sdk-language PYTHON --metadata-file deploy/flex-template/metadata.json

echo "IMAGE=${IMAGE}"
echo "TEMPLATE=${TEMPLATE}"
