"""deploy/: the image agrees with packaging, the template with the options class, the launch requests and the
schedule with both, the Prometheus config and alerts pass promtool (and their unit tests), every metric and
label that the alerts and the dashboard use exists in beam_pipeline/metrics.py, and every alert has a runbook
section. Static checks: no server, no cloud (the dashboard's queries run in test_deploy_dashboard.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from beam_pipeline import metrics
from beam_pipeline import options as job_options
from servers import require_binary

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "emmr-dashboard.json"
ALERTS = PROM / "alerts.yml"
METADATA = DEPLOY / "flex-template" / "metadata.json"
SCRIPTS = [DEPLOY / "build.sh", DEPLOY / "launch.sh", DEPLOY / "scheduler" / "schedule.sh"]


def _load(module_path: Path, name: str):
    """Import a deploy/ script as a module (deploy/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, module_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


versions = _load(DEPLOY / "versions.py", "deploy_versions")
render_body = _load(DEPLOY / "render_body.py", "deploy_render_body")
make_metadata = _load(DEPLOY / "make_template_metadata.py", "deploy_make_template_metadata")
make_dashboard = _load(DEPLOY / "grafana" / "make_dashboard.py", "deploy_make_dashboard")

# Sample environment for the launch requests: what an operator exports (no real project).
LAUNCH_ENV = {
    "PROJECT": "emmr-example", "REGION": "us-central1", "TEMPLATE": "gs://emmr-example/templates/emmr-score.json",
    "IMAGE": "us-central1-docker.pkg.dev/emmr-example/emmr/emmr-score:abc123", "TEMP_LOCATION": "gs://emmr-example/tmp",
    "MODEL": "gs://emmr-example/models/emmr-v1", "INPUT": "gs://emmr-example/inbox/*.parquet",
    "OUTPUT": "gs://emmr-example/predictions/daily/part", "DEAD_LETTER": "gs://emmr-example/dead-letters/daily/part",
    "PUSHGATEWAY": "10.0.0.5:9091",
}
STREAMING_ENV = {**LAUNCH_ENV, "SUBSCRIPTION": "projects/emmr-example/subscriptions/emmr-input",
                 "OUTPUT_TOPIC": "projects/emmr-example/topics/emmr-predictions",
                 "DEAD_LETTER": "projects/emmr-example/topics/emmr-dead-letters", "OUTPUT": ""}
# FlexTemplateRuntimeEnvironment's fields (Dataflow API v1b3).
FLEX_ENVIRONMENT_FIELDS = {
    "numWorkers", "maxWorkers", "zone", "serviceAccountEmail", "tempLocation", "machineType", "additionalExperiments",
    "network", "subnetwork", "additionalUserLabels", "kmsKeyName", "ipConfiguration", "workerRegion", "workerZone",
    "enableStreamingEngine", "flexrsGoal", "stagingLocation", "sdkContainerImage", "diskSizeGb",
    "autoscalingAlgorithm", "dumpHeapOnOom", "saveHeapDumpsToGcsPath", "launcherMachineType",
    "enableLauncherVmSerialPortLogging", "streamingMode",
}
DATAFLOW_JOB_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,1022}[a-z0-9])?$")


def run_script(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, **(env or {})})


# ------------------------------------------------------------------------------------------- the image


def dockerfile() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def dockerfile_args() -> dict[str, str | None]:
    """ARG name -> default (None without one), as declared before the first FROM."""
    out = {}
    for line in dockerfile().split("\nFROM ", 1)[0].splitlines():
        m = re.match(r"^ARG\s+(\w+)(?:=(\S+))?\s*$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_the_image_takes_its_beam_version_from_setup_py_only():
    beam = versions.beam_version()
    assert beam == re.search(r'^BEAM_VERSION = "([^"]+)"', (ROOT / "setup.py").read_text(), re.M).group(1)
    args = dockerfile_args()
    assert "BEAM_VERSION" in args and args["BEAM_VERSION"] is None, "the Dockerfile must not carry its own copy"
    text = dockerfile()
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk" in text
    assert "COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam" in text
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
    # The pip-installed Beam is checked against the same variable, and nothing in deploy/ names the version.
    assert "apache_beam.__version__ == '${BEAM_VERSION}'" in text
    for path in [DEPLOY / "Dockerfile", DEPLOY / "cloudbuild.yaml", *SCRIPTS]:
        assert beam not in path.read_text(), f"{path} repeats the Beam version {beam}"
    # The lock file the image installs with pins the same Beam.
    assert versions.pinned(ROOT / "requirements" / "lock.txt", "apache-beam") == beam


@pytest.mark.parametrize("mode, expected", [("--local", "--build-arg BEAM_VERSION={beam}"),
                                            ("", "_BEAM_VERSION={beam}")])
def test_build_script_passes_setup_py_beam_version(mode, expected):
    env = {"PROJECT": "emmr-example", "REGION": "us-central1", "TEMPLATE_BUCKET": "gs://emmr-example"}
    out = run_script(DEPLOY / "build.sh", "--dry-run", *([mode] if mode else []), env=env)
    assert out.returncode == 0, out.stderr
    assert expected.format(beam=versions.beam_version()) in out.stdout
    assert "--metadata-file deploy/flex-template/metadata.json" in out.stdout
    assert "IMAGE=us-central1-docker.pkg.dev/emmr-example/emmr/emmr-score:" in out.stdout


def test_the_image_torch_and_python_agree_with_the_pins():
    args = dockerfile_args()
    tag = args["PYTORCH_IMAGE"].split(":", 1)[1]
    assert tag.split("-")[0] == versions.torch_version().split("+")[0], "PyTorch image != requirements/dev.txt torch"
    assert "-cuda" in tag and tag.endswith("-runtime")
    py = args["PYTHON_VERSION"]
    assert f"python{py.replace('.', '')}-template-launcher-base" in args["LAUNCHER_IMAGE"]
    assert (DEPLOY / "cloudbuild.yaml").read_text().count(f"python{py.replace('.', '')}-template-launcher-base") == 1
    # The image's torch is never replaced: torch and its CUDA wheels are left out of the constraints, and only
    # apache-beam[gcp] (never [torch]) is installed.
    text = "\n".join(line for line in dockerfile().splitlines() if not line.lstrip().startswith("#"))
    assert "apache-beam[torch]" not in text
    assert "grep -viE '^(torch|triton|nvidia-|cuda-)' lock.txt > constraints.txt" in text
    assert re.search(r'test "\$\(python -c .import torch; print\(torch.__version__\).\)" = "\$\{torch_before\}"', text)


def test_every_file_the_image_copies_exists_and_passes_the_dockerignore():
    text = dockerfile()
    sources = []
    for m in re.finditer(r"^COPY (?!--from)(.+)$", text, re.M):
        sources += m.group(1).split()[:-1]
    assert sources, "no COPY found"
    allowed = [line[1:] for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line.startswith("!")]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert any(src.rstrip("/") == a.rstrip("/") for a in allowed), f"COPY {src}: ignored by Dockerfile.dockerignore"
    py_file = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=(\S+)", text).group(1)
    assert f"COPY deploy/flex_main.py ./{Path(py_file).name}" in text and py_file.startswith("/template/")


@pytest.mark.slow  # imports the whole job (torch, Beam) in a subprocess
def test_flex_template_entry_point_runs_the_job_options_check():
    out = subprocess.run([sys.executable, str(DEPLOY / "flex_main.py"), "--runner=DirectRunner"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 2, out.stderr  # bad options: exit 2 with every problem named
    assert "--model" in out.stderr and "--dead_letter" in out.stderr


def test_scripts_parse_and_document_themselves():
    for script in SCRIPTS:
        assert run_script("bash", "-n", script).returncode == 0, script
        assert os.access(script, os.X_OK), f"{script} is not executable"
        help_text = run_script(script, "--help") if script.name != "launch.sh" else run_script(script, "batch", "--help")
        assert help_text.returncode == 0 and "Environment" in help_text.stdout or "Always:" in help_text.stdout, script


# ------------------------------------------------------------------------------------------- the template


def metadata() -> dict:
    return json.loads(METADATA.read_text())


def params() -> dict[str, dict]:
    return {p["name"]: p for p in metadata()["parameters"]}


def test_template_metadata_is_generated_from_the_options_class():
    assert METADATA.read_text() == make_metadata.render(), (
        "deploy/flex-template/metadata.json is out of date: run .venv/bin/python deploy/make_template_metadata.py")


def test_every_option_is_a_template_parameter_or_excluded_with_a_reason():
    job_flags = {a.dest for a in make_metadata.job_arguments()}
    declared = set(params())
    excluded = set(make_metadata.NOT_PARAMETERS)
    assert job_flags - excluded <= declared
    assert declared - job_flags == set(make_metadata.BEAM_PARAMETERS)
    assert {a.dest for a in make_metadata.job_arguments() if a.nargs == 0} <= excluded, "flags without a value"
    assert excluded <= job_flags and all(len(reason) > 20 for reason in make_metadata.NOT_PARAMETERS.values())
    assert {"pushgateway", "summary_json"} <= excluded, "a template's launcher submits and returns: the report pushes"
    for name, p in params().items():
        assert p["label"] and p["helpText"] and isinstance(p["isOptional"], bool), name
        for r in p.get("regexes", []):
            re.compile(r)
    required = {n for n, p in params().items() if not p["isOptional"]}
    assert {"model", "dead_letter"} <= required <= job_flags


ACCEPTED = {
    "input": ["gs://bucket-1/in/*.parquet", "gs://my.bucket/a/b/part-*.parquet"],
    "input_subscription": ["projects/p-1/subscriptions/emmr-in"],
    "input_topic": ["projects/p-1/topics/emmr-in"],
    "output": ["gs://bucket-1/out/predictions"],
    "output_topic": ["projects/p-1/topics/emmr-out"],
    "dead_letter": ["gs://bucket-1/dl/part", "projects/p-1/topics/emmr-dead"],
    "model": ["gs://bucket-1/models/emmr-v2"],
    "device": ["cpu", "cuda", "cuda:1"],
    "autocast": ["none", "bfloat16"],
    "batch_size": ["1", "512"],
    "batch_duration_s": ["0.5", "2"],
    "metrics_port": ["9464", "0", "-1"],
    "dataflow_service_options": ["worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"],
    "sdk_location": ["container"],
}
REJECTED = {
    "input": ["data/*.parquet", "/local/in/*.parquet", "gs://"],
    "input_subscription": ["projects/p/topics/emmr-in", "emmr-in", "projects/p/subscriptions/ab"],
    "output_topic": ["emmr-out", "projects/p/topics/ab"],
    "dead_letter": ["out/dead", "projects/p/subscriptions/abc"],
    "model": ["runs/ckpt"],
    "device": ["gpu", "cuda:x", "CPU"],
    "autocast": ["fp8"],
    "batch_size": ["0", "-5", "many"],
    "batch_duration_s": ["-1", "soon"],
    "metrics_port": ["http", "-2"],
}


def matches(name: str, value: str) -> bool:
    return all(re.fullmatch(r, value) for r in params()[name].get("regexes", []))


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_template_regexes_accept_values_the_job_accepts(name):
    for value in ACCEPTED[name]:
        assert matches(name, value), f"{name}={value!r} rejected by the template"
        if name in {a.dest for a in make_metadata.job_arguments()}:  # ... and the job agrees
            mode = "streaming" if name in ("input_subscription", "input_topic", "output_topic") else "batch"
            job = dict(make_metadata.EXAMPLES[mode])
            if name in ("input_subscription", "input_topic"):
                job.pop("input_subscription")
            if name == "dead_letter" and value.startswith("projects/"):
                job = dict(make_metadata.EXAMPLES["streaming"])
            job[name] = value
            job_options.check_options(job_options.ScoringOptions(make_metadata.argv_of(job)))


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_template_regexes_reject_bad_values(name):
    for value in REJECTED[name]:
        assert not matches(name, value), f"{name}={value!r} accepted by the template"


# ------------------------------------------------------------------------------------------- launch and schedule


def launch_request(kind: str, env: dict[str, str]) -> dict:
    template = json.loads((DEPLOY / "flex-template" / f"launch-{kind}.json").read_text())
    return render_body.render(template, env)


@pytest.mark.parametrize("kind, env, mode", [("batch", LAUNCH_ENV, "batch"), ("streaming", STREAMING_ENV, "streaming")])
def test_launch_requests_pass_the_template_and_the_job_checks(kind, env, mode):
    body = launch_request(kind, env)["launchParameter"]
    assert DATAFLOW_JOB_NAME.match(body["jobName"])
    assert body["containerSpecGcsPath"] == env["TEMPLATE"]
    assert set(body["environment"]) <= FLEX_ENVIRONMENT_FIELDS
    assert body["environment"]["sdkContainerImage"] == env["IMAGE"]
    assert "no_use_multiple_sdk_containers" in body["environment"]["additionalExperiments"]
    declared = params()
    job_values = {}
    for name, value in body["parameters"].items():
        assert name in declared, f"{name} is not a template parameter"
        assert isinstance(value, str) and matches(name, value), f"{name}={value!r} fails the template's regexes"
        if name not in make_metadata.BEAM_PARAMETERS:
            job_values[name] = value
    assert {n for n, p in declared.items() if not p["isOptional"]} <= set(job_values)
    config = job_options.check_options(job_options.ScoringOptions(make_metadata.argv_of(job_values)))
    assert config.mode == mode and config.device == "cuda"
    assert body["parameters"]["sdk_location"] == "container"
    assert "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" == body["parameters"]["dataflow_service_options"]


def test_launch_requests_agree_with_prometheus_and_the_alerts():
    batch = launch_request("batch", LAUNCH_ENV)["launchParameter"]
    streaming = launch_request("streaming", STREAMING_ENV)["launchParameter"]
    overdue = next(r for r in alert_rules() if r["alert"] == "EmmrBatchRunOverdue")
    assert f'job="{batch["jobName"]}"' in overdue["expr"], "the scheduled job's name is what the alert watches"
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    workers = next(j for j in config["scrape_configs"] if j["job_name"] == "emmr-streaming")
    port = int(streaming["parameters"]["metrics_port"])
    assert port == job_options.DEFAULT_METRICS_PORT
    role = streaming["environment"]["additionalUserLabels"]["emmr_role"]
    for sd in workers["gce_sd_configs"]:
        assert sd["port"] == port and f'labels.emmr_role = "{role}"' == sd["filter"]
    assert streaming["environment"]["enableStreamingEngine"] is True


def test_render_body_names_every_missing_variable_and_drops_unset_optionals():
    with pytest.raises(render_body.MissingVariables) as e:
        launch_request("batch", {"PROJECT": "p"})
    assert {"TEMPLATE", "IMAGE", "INPUT", "OUTPUT", "DEAD_LETTER", "MODEL", "TEMP_LOCATION"} <= set(e.value.names)
    body = launch_request("batch", {**LAUNCH_ENV, "SERVICE_ACCOUNT": ""})["launchParameter"]
    assert "serviceAccountEmail" not in body["environment"]
    quoted = launch_request("batch", {**LAUNCH_ENV, "INPUT": 'gs://b/"odd",name/*.parquet'})
    assert quoted["launchParameter"]["parameters"]["input"] == 'gs://b/"odd",name/*.parquet'


def test_launch_and_schedule_scripts_send_the_rendered_requests():
    out = run_script(DEPLOY / "launch.sh", "batch", "--dry-run", env=LAUNCH_ENV)
    assert out.returncode == 0, out.stderr
    first, body = out.stdout.split("\n", 1)
    assert first == "POST https://dataflow.googleapis.com/v1b3/projects/emmr-example/locations/us-central1/flexTemplates:launch"
    assert json.loads(body) == launch_request("batch", LAUNCH_ENV)
    out = run_script(DEPLOY / "launch.sh", "streaming", "--dry-run", env=STREAMING_ENV)
    assert json.loads(out.stdout.split("\n", 1)[1]) == launch_request("streaming", STREAMING_ENV)
    cpu = run_script(DEPLOY / "launch.sh", "batch", "--dry-run",
                     env={**LAUNCH_ENV, "DEVICE": "cpu", "DATAFLOW_SERVICE_OPTIONS": "none"})
    cpu_body = json.loads(cpu.stdout.split("\n", 1)[1])["launchParameter"]["parameters"]
    assert cpu_body["device"] == "cpu" and "dataflow_service_options" not in cpu_body
    missing = run_script(DEPLOY / "launch.sh", "streaming", "--dry-run", env=LAUNCH_ENV)
    assert missing.returncode == 2 and "SUBSCRIPTION" in missing.stderr
    sched = run_script(DEPLOY / "scheduler" / "schedule.sh", "--dry-run", env=SCHEDULE_ENV)
    assert sched.returncode == 0, sched.stderr
    lines = sched.stdout.splitlines()
    report_job, workflow, scheduler = lines[:3]
    assert report_job.startswith("+ gcloud run jobs deploy emmr-score-report ")
    assert f"--image {LAUNCH_ENV['IMAGE']} --command emmr-score --args report" in report_job
    assert workflow.startswith("+ gcloud workflows deploy emmr-score-daily ") and "scheduler/workflow.yaml" in workflow
    assert scheduler.startswith("+ gcloud scheduler jobs create http emmr-score-daily ")
    assert "workflowexecutions.googleapis.com/v1/projects/emmr-example/locations/us-central1/workflows/" \
           "emmr-score-daily/executions" in scheduler and "--oauth-service-account-email" in scheduler
    argument = json.loads(json.loads("\n".join(lines[3:]))["argument"])
    assert argument["launch"] == launch_request("batch", LAUNCH_ENV)  # the same request as launch.sh batch
    assert (argument["pushgateway"], argument["report_job"], argument["region"]) == (
        "10.0.0.5:9091", "emmr-score-report", "us-central1")
    missing = run_script(DEPLOY / "scheduler" / "schedule.sh", "--dry-run", env={**LAUNCH_ENV, "PUSHGATEWAY": ""})
    assert missing.returncode == 2 and "PUSHGATEWAY" in missing.stderr and "SCHEDULER_SERVICE_ACCOUNT" in missing.stderr


SCHEDULE_ENV = {**LAUNCH_ENV, "SCHEDULER_SERVICE_ACCOUNT": "scheduler@emmr-example.iam.gserviceaccount.com"}
WORKFLOW_EXPR = re.compile(r"^\$\{(.*)\}$", re.DOTALL)


def test_the_scheduled_workflow_launches_waits_then_reports_with_the_report_command():
    """deploy/scheduler/workflow.yaml: launch (the flex template submits and returns), poll the job until it is
    terminal, then `emmr-score report --job <id>` in the Cloud Run job; the report's arguments parse."""
    from beam_pipeline import report

    workflow = yaml.safe_load((DEPLOY / "scheduler" / "workflow.yaml").read_text())
    steps = [next(iter(s.items())) for s in workflow["main"]["steps"]]
    names = [n for n, _ in steps]
    assert names == ["init", "launch", "remember_job", "wait", "poll", "finished", "report", "done"]
    step = dict(steps)
    assert step["launch"]["call"] == "http.post" and step["launch"]["args"]["body"] == "${args.launch}"
    assert step["launch"]["args"]["url"].endswith('"/flexTemplates:launch"}')
    assert step["poll"]["call"] == "http.get" and '"/jobs/" + job_id' in step["poll"]["args"]["url"]
    switch = step["finished"]["switch"][0]
    assert switch["next"] == "report" and "in terminal" in switch["condition"] and step["finished"]["next"] == "wait"
    terminal = next(a["terminal"] for a in step["init"]["assign"] if "terminal" in a)
    assert {"JOB_STATE_" + s for s in __import__("beam_pipeline.jobs", fromlist=["TERMINAL"]).TERMINAL} == set(terminal)
    assert step["report"]["call"] == "googleapis.run.v1.namespaces.jobs.run"
    args_expr = step["report"]["args"]["body"]["overrides"]["containerOverrides"][0]["args"]
    listed = WORKFLOW_EXPR.match(args_expr.strip()).group(1)
    values = {"job_id": "2026-07-20_03_00_12-1", "project": "emmr-example", "region": "us-central1",
              "args.pushgateway": "10.0.0.5:9091"}
    argv = [values.get(item.strip(), item.strip().strip('"')) for item in listed.strip("[] \n").split(",")]
    assert argv[0] == "report"
    parsed = report.parser().parse_args(argv[1:])
    assert (parsed.job, parsed.project, parsed.region, parsed.pushgateway) == (
        "2026-07-20_03_00_12-1", "emmr-example", "us-central1", "10.0.0.5:9091")


# ------------------------------------------------------------------------------------------- Prometheus


def promtool(*args: str) -> subprocess.CompletedProcess:
    exe = require_binary("promtool")
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=PROM)


@pytest.mark.integration
def test_promtool_accepts_the_config_and_the_rules():
    out = promtool("check", "config", "prometheus.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout and "WARNING" not in out.stdout + out.stderr
    out = promtool("check", "rules", "alerts.yml")
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.integration
@pytest.mark.parametrize("tests_file", ["alerts_test.yml", "alerts_test_long.yml"])
def test_promtool_unit_tests_of_the_alerts_pass(tests_file):
    out = promtool("test", "rules", tests_file)
    assert out.returncode == 0, out.stdout + out.stderr


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    firing, quiet = set(), set()
    for f in ("alerts_test.yml", "alerts_test_long.yml"):
        for case in yaml.safe_load((PROM / f).read_text())["tests"]:
            for t in case.get("alert_rule_test", []):
                (firing if t["exp_alerts"] else quiet).add(t["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_every_alert_has_severity_annotations_and_a_runbook_section():
    runbook = (DEPLOY / "RUNBOOK.md").read_text()
    headings = set(re.findall(r"^### (\w+)\s*$", runbook, re.M))
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), name
        assert rule["annotations"]["runbook"] == f"deploy/RUNBOOK.md#{name.lower()}", name
        assert name in headings, f"deploy/RUNBOOK.md has no '### {name}' section"


# ------------------------------------------------------------------------------------------- metric names

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                   "offset", "inf", "nan", "atan2"}
BUILTIN_SERIES = {"up"}  # Prometheus' own, per scrape target
TARGET_LABELS = {"job", "instance", "mode", "vm", "le", "work"}  # by Prometheus / prometheus.yml, or histogram buckets


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) that a PromQL expression uses. Enough of PromQL for our expressions: strings,
    ranges and subqueries are removed first, label names come from matchers and grouping clauses."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    labels = set()
    for m in re.finditer(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", m.group(1)))
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    bare = re.sub(r"\{[^}]*\}", " ", expr)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(?!\w)(\s*\()?", bare):
        word, call = m.group(1), m.group(2)
        if not call and word not in PROMQL_KEYWORDS:
            names.add(word)
    return names, labels


def declared_series() -> set[str]:
    from beam_pipeline import exporter

    out = set(BUILTIN_SERIES) | {exporter.LAST_POLL, exporter.ATTEMPTED_ONLY}  # the exporter's own
    for m in metrics.ALL:
        out.add(m.name)
        if m.kind == metrics.HISTOGRAM:
            out |= {f"{m.name}_bucket", f"{m.name}_count", f"{m.name}_sum"}
    return out


def declared_labels() -> set[str]:
    return TARGET_LABELS | {label for m in metrics.ALL for label in m.labels}


def test_promql_names_parser():
    names, labels = promql_names(
        'histogram_quantile(0.95, sum by (job, le) (rate(emmr_x_bucket{mode="streaming", job=~"$job"}[$__rate_interval])))'
        ' / on (job) group_left sum(up) > 26 * 3600 unless absent(emmr_y{a="b"} offset 5m) or time() - emmr_z[7d:1h]')
    assert names == {"emmr_x_bucket", "up", "emmr_y", "emmr_z"}
    assert labels == {"job", "le", "mode", "a"}


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for p in json.loads(DASHBOARD.read_text())["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def test_alerts_and_dashboard_use_only_declared_metrics_and_labels():
    exprs = [(r["alert"], r["expr"]) for r in alert_rules()] + dashboard_exprs()
    assert len(exprs) > 30
    for where, expr in exprs:
        names, labels = promql_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= declared_series(), f"{where}: unknown metrics {names - declared_series()}"
        assert labels <= declared_labels(), f"{where}: unknown labels {labels - declared_labels()}"


def test_dashboard_shows_every_metric():
    used = set()
    for _, expr in dashboard_exprs():
        used |= promql_names(expr)[0]
    for m in metrics.ALL:
        assert {m.name, f"{m.name}_bucket", f"{m.name}_sum", f"{m.name}_count"} & used, f"{m.name} is on no panel"


# ------------------------------------------------------------------------------------------- the dashboard


def test_dashboard_is_generated_and_well_formed():
    assert DASHBOARD.read_text() == make_dashboard.render(), "run python3 deploy/grafana/make_dashboard.py"
    d = json.loads(DASHBOARD.read_text())
    assert d["schemaVersion"] >= 36 and d["uid"] == "emmr-scoring"  # Grafana 10 reads 36 and later
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["job"]["includeAll"]
    ids, cells = set(), set()
    for p in d["panels"]:
        assert p["id"] not in ids
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}" and p["targets"] and p["description"], p["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])
            assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
    titles = " | ".join(p["title"] for p in d["panels"]).lower()
    for expected in ("throughput", "dead letters by reason", "missing rate per modality", "key-missing rate per modality",
                     "prediction distribution", "batch size", "inference latency", "end-to-end latency",
                     "model version and device"):
        assert expected in titles, f"no panel for {expected}"


# ------------------------------------------------------------------------------------------- replaying dead letters

replay_tool = _load(DEPLOY / "replay_dead_letters.py", "deploy_replay_dead_letters")


def test_dead_letters_replay_to_the_records_they_came_from(synth_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_pipeline import dead_letters as dl

    records = pq.read_table(next(Path(synth_dir).glob("*.parquet")))
    records = records.select([c for c in records.schema.names if not c.startswith(("evidence_", "key_")) and c != "dropped"])
    letters = [dl.DeadLetter(records["id"][i].as_py(), f"in.parquet#row={i}", "inference_error", "boom",
                             dl.ipc_bytes(records.slice(i, 1)), 0) for i in range(3)]
    letters.append(dl.DeadLetter(None, "bad.parquet", dl.UNREADABLE_FILE, "cannot be read", None, 0))
    letters.append(dl.DeadLetter("big", "in.parquet#row=9", "inference_error", "boom",
                                 dl.ipc_bytes(records.slice(3, 1))[:200], 0))  # a payload cut short
    pq.write_table(dl.table(letters), tmp_path / "dead-00000-of-00001.parquet")

    out = tmp_path / "replay.parquet"
    status = replay_tool.main(["--dead-letters", str(tmp_path / "dead-*.parquet"), "--out", str(out)])
    assert status == 1  # two could not be replayed, and said so
    replayed = pq.read_table(out)
    assert replayed.to_pylist() == records.slice(0, 3).to_pylist()

    # Streaming dead letters (JSON messages), selected by kind.
    with open(tmp_path / "dead.jsonl", "w") as f:
        for data, _attributes in dl.to_messages(dl.table(letters)):
            f.write(data.decode() + "\n")
    status = replay_tool.main(["--dead-letters", str(tmp_path / "dead.jsonl"), "--kind", "inference_error",
                               "--out", str(out)])
    assert status == 1 and pq.read_table(out).to_pylist() == records.slice(0, 3).to_pylist()
    assert replay_tool.main(["--dead-letters", str(tmp_path / "none-*.parquet"), "--out", str(out)]) == 2
    assert pa.ipc.open_stream(letters[0].payload).read_all().num_rows == 1


def test_update_replaces_the_streaming_job_in_place_with_the_recorded_name_mapping():
    """`launch.sh update`: the streaming request with update=true and transform-name-mapping.json; every mapped
    new name is a name of today's graph (transforms-streaming.txt), no old one still is."""
    out = run_script(DEPLOY / "launch.sh", "update", "--dry-run", env=STREAMING_ENV)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout.split("\n", 1)[1])
    launch = body["launchParameter"]
    assert launch["update"] is True and launch["jobName"] == "emmr-streaming"
    assert launch["parameters"] == launch_request("streaming", STREAMING_ENV)["launchParameter"]["parameters"]
    mapping = json.loads((DEPLOY / "flex-template" / "transform-name-mapping.json").read_text())
    mapping = {k: v for k, v in mapping.items() if not k.startswith("#")}
    assert launch["transformNameMappings"] == mapping
    names = set((DEPLOY / "flex-template" / "transforms-streaming.txt").read_text().split("\n"))
    assert all(new in names and old not in names for old, new in mapping.items()), mapping
