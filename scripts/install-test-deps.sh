#!/usr/bin/env bash
# Installs the system packages the integration tests need (tests/servers.py); `make test` runs it first.
# Idempotent and fast when everything is there (it only looks for the binaries then).
#   - prometheus, promtool, prometheus-pushgateway: Debian packages `prometheus`, `prometheus-pushgateway`,
#     installed without prompts and without leaving Debian's services running (the tests start their own
#     servers on free ports);
#   - java and the Google Cloud CLI's Pub/Sub emulator jar: `google-cloud-cli-pubsub-emulator` when an apt
#     source offers it, java from `default-jre-headless`;
#   - gcp-storage-emulator comes with the virtualenv (requirements/dev.txt).
# Under CI (CI=true) anything still missing at the end is an error; elsewhere a warning (those tests skip).
set -euo pipefail

missing=()
warn() { echo "install-test-deps: $*" >&2; }

SUDO=() can_install=1
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO=(sudo -n); else can_install=0; fi
fi

have() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/bin/$1" ]]; }

pubsub_jar() {
  local roots=(/usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk /opt/google-cloud-sdk "$HOME/google-cloud-sdk")
  if [[ -n "${EMMR_PUBSUB_EMULATOR_JAR:-}" && -f "${EMMR_PUBSUB_EMULATOR_JAR}" ]]; then
    echo "$EMMR_PUBSUB_EMULATOR_JAR"; return 0
  fi
  if have gcloud; then roots=("$(dirname "$(dirname "$(readlink -f "$(command -v gcloud)")")")" "${roots[@]}"); fi
  local root jar
  for root in "${roots[@]}"; do
    for jar in "$root"/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar; do
      [[ -f "$jar" ]] && { echo "$jar"; return 0; }
    done
  done
  return 1
}

apt_updated=0
apt_install() {  # apt_install PACKAGE...: noninteractive, no recommends, services not started
  if [[ $can_install -eq 0 ]]; then
    warn "not root and no passwordless sudo: install $* yourself"; return 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    warn "no apt-get on this machine: install $* yourself"; return 1
  fi
  if [[ $apt_updated -eq 0 ]]; then
    "${SUDO[@]}" apt-get update -q >/dev/null || warn "apt-get update failed; trying with the package lists there are"
    apt_updated=1
  fi
  # Debian starts a package's service on installation unless policy-rc.d says no: say no (exit 101) for
  # the duration, unless the machine already has a policy.
  local policy=/usr/sbin/policy-rc.d added_policy=0 rc=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# added by emmr scripts/install-test-deps.sh while it installs packages\nexit 101\n' \
      | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    added_policy=1
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get install -y -q --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" || rc=$?
  if [[ $added_policy -eq 1 ]]; then "${SUDO[@]}" rm -f "$policy"; fi
  return $rc
}

stop_services() {  # a machine that runs systemd: the packages we installed must not hold ports or start at boot
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    "${SUDO[@]}" systemctl disable --now "$@" >/dev/null 2>&1 || true
  fi
}

# --- Prometheus, promtool, Pushgateway
packages=()
{ have prometheus && have promtool; } || packages+=(prometheus)
have prometheus-pushgateway || packages+=(prometheus-pushgateway)
if [[ ${#packages[@]} -gt 0 ]]; then
  echo "install-test-deps: installing ${packages[*]}" >&2
  if apt_install "${packages[@]}"; then stop_services "${packages[@]}"; fi
fi
for b in prometheus promtool prometheus-pushgateway; do have "$b" || missing+=("$b"); done

# --- java and the Pub/Sub emulator
if ! have java; then
  echo "install-test-deps: installing default-jre-headless (java, for the Pub/Sub emulator)" >&2
  apt_install default-jre-headless || true
fi
have java || missing+=(java)
if ! pubsub_jar >/dev/null; then
  candidate=$(apt-cache policy google-cloud-cli-pubsub-emulator 2>/dev/null | awk '/Candidate:/ {print $2}' || true)
  if [[ -n "$candidate" && "$candidate" != "(none)" ]]; then
    echo "install-test-deps: installing google-cloud-cli-pubsub-emulator $candidate" >&2
    apt_install google-cloud-cli-pubsub-emulator || true
  else
    warn "no apt source offers google-cloud-cli-pubsub-emulator; add Google's Cloud SDK apt repository" \
         "(https://cloud.google.com/sdk/docs/install#deb) or run: gcloud components install pubsub-emulator"
  fi
fi
pubsub_jar >/dev/null || missing+=("pubsub-emulator jar")

# --- the GCS emulator (a Python package of the virtualenv)
venv_bin="${VENV:-.venv}/bin"
[[ -x "$venv_bin/gcp-storage-emulator" ]] || have gcp-storage-emulator || missing+=("gcp-storage-emulator (make venv)")

if [[ ${#missing[@]} -gt 0 ]]; then
  if [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then
    warn "missing: ${missing[*]} (CI=true: the integration tests need them)"; exit 1
  fi
  warn "missing: ${missing[*]}; the integration tests that need them will be skipped"
fi
exit 0
