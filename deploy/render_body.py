"""Render a flex-template launch request (deploy/flex-template/launch-*.json) from environment variables.

    python3 deploy/render_body.py deploy/flex-template/launch-batch.json > body.json

The request files are valid JSON whose strings may hold `${NAME}` (required) or `${NAME:-default}` (optional;
the default may be empty). Each string is substituted as a string, so a value can never break the JSON; a
key whose value renders to "" is dropped (an optional parameter left unset), and an unset required variable is
an error that names every missing one. Numbers may stay strings: the Dataflow API accepts decimal strings for
integer fields. Standard library only, so that it runs wherever gcloud runs.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::-([^}]*))?\}")


class MissingVariables(KeyError):
    def __init__(self, names: set[str]):
        self.names = sorted(names)
        super().__init__(f"set {', '.join(self.names)}")


def variables(template) -> dict[str, str | None]:
    """Every placeholder of a parsed request: name -> default (None when required)."""
    found: dict[str, str | None] = {}

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str):
            for m in PLACEHOLDER.finditer(node):
                found.setdefault(m.group(1), m.group(2))

    walk(template)
    return found


def render(template, env: Mapping[str, str]):
    """The request with every placeholder substituted; raises MissingVariables for unset required ones."""
    missing: set[str] = set()

    def sub(text: str) -> str:
        def one(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            value = env.get(name)
            if not value:  # unset or empty: the default (bash's ${NAME:-default}), else missing
                if default is None:
                    missing.add(name)
                    return ""
                return default
            return value

        return PLACEHOLDER.sub(one, text)

    def walk(node):
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                r = walk(v)
                if r != "" and r != {} and r != []:
                    out[k] = r
            return out
        if isinstance(node, list):
            return [r for r in (walk(v) for v in node) if r != ""]
        if isinstance(node, str):
            return sub(node)
        return node

    out = walk(template)
    if missing:
        raise MissingVariables(missing)
    return out


# FlexTemplateRuntimeEnvironment field -> the Beam pipeline option Dataflow's launcher passes for it.
ENVIRONMENT_FLAGS = {
    "tempLocation": "temp_location", "stagingLocation": "staging_location", "sdkContainerImage": "sdk_container_image",
    "machineType": "machine_type", "maxWorkers": "max_num_workers", "numWorkers": "num_workers",
    "serviceAccountEmail": "service_account_email", "network": "network", "subnetwork": "subnetwork",
    "workerRegion": "worker_region", "workerZone": "worker_zone", "kmsKeyName": "dataflow_kms_key",
}


def launcher_argv(request: dict, project: str, region: str) -> list[str]:
    """The flags a flex template's launcher runs the job with, for a rendered launch request: the template
    parameters as --name=value, the runtime environment as Beam's own options, DataflowRunner, the job name.
    (What tests/test_dataflow_graph.py builds the job graph from, with --dry_run=True.)"""
    launch = request["launchParameter"]
    argv = ["--runner=DataflowRunner", f"--project={project}", f"--region={region}", f"--job_name={launch['jobName']}"]
    argv += [f"--{name}={value}" for name, value in launch.get("parameters", {}).items()]
    env = launch.get("environment", {})
    argv += [f"--{ENVIRONMENT_FLAGS[k]}={v}" for k, v in env.items() if k in ENVIRONMENT_FLAGS]
    argv += [f"--experiments={e}" for e in env.get("additionalExperiments", [])]
    argv += [f"--labels={k}={v}" for k, v in env.get("additionalUserLabels", {}).items()]
    if env.get("enableStreamingEngine"):
        argv.append("--enable_streaming_engine")
    if env.get("ipConfiguration") == "WORKER_IP_PRIVATE":
        argv.append("--no_use_public_ips")
    return argv


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: render_body.py REQUEST.json  (variables from the environment)", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        template = json.load(f)
    try:
        body = render(template, os.environ)
    except MissingVariables as e:
        print(f"render_body.py: {argv[0]}: set {', '.join(e.names)}", file=sys.stderr)
        return 2
    json.dump(body, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
