"""Generate the flex template's metadata (deploy/flex-template/metadata.json) from the job's options class.

    python deploy/make_template_metadata.py            # rewrite the file
    python deploy/make_template_metadata.py --check    # exit 1, with a diff, when the file is out of date

Every flag of `beam_pipeline.options.ScoringOptions` becomes a template parameter:
- name and help text from the parser;
- whether it is required, by asking `check_options` itself: a flag is required when a valid batch job and a valid
  streaming job (EXAMPLES) both become invalid without it;
- validation regexes from PARAMETERS (Cloud Storage paths, and the Pub/Sub patterns of options.py itself), else
  derived from the argument's type or choices (an int, a float, an enum).
A template runs on Dataflow, so paths must be gs:// there even where the job also accepts local paths.

A few of Beam's own options that the GPU job needs at launch are declared too (BEAM_PARAMETERS, help from Beam's
parser). Flags for runs in the launching process only (the summary's Pushgateway and JSON: a template's
launcher submits and returns) are not parameters, nor flags that take no value (the launcher passes every
parameter as --name=value, which argparse rejects for them); NOT_PARAMETERS says how the template gets the same
effect. tests/test_deploy.py regenerates the file and compares, so a flag added to the options class fails the
suite until this is re-run.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from apache_beam.options import pipeline_options as beam_options

from beam_pipeline import options as job_options

METADATA = Path(__file__).resolve().parent / "flex-template" / "metadata.json"

GCS_BUCKET = r"[a-z0-9][-_.a-z0-9]{1,220}[a-z0-9]"
GCS_PATH = rf"^gs://{GCS_BUCKET}/.+$"
POSITIVE_INT = r"^[1-9][0-9]*$"
INT = r"^-?[0-9]+$"
POSITIVE_NUMBER = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)$"


def _anchored(pattern: str) -> str:
    return pattern if pattern.startswith("^") and pattern.endswith("$") else f"^(?:{pattern})$"


TOPIC = _anchored(job_options.TOPIC.pattern)
SUBSCRIPTION = _anchored(job_options.SUBSCRIPTION.pattern)


@dataclass(frozen=True)
class Param:
    label: str
    regexes: tuple[str, ...] = ()
    param_type: str | None = None  # Dataflow's ParameterType; TEXT when None


# Per flag: label, validation and picker type. Flags missing here still become parameters (label from the name,
# regexes from the argument's type), so a new flag never silently disappears from the template.
PARAMETERS: dict[str, Param] = {
    "input": Param("Input Parquet files (batch)", (GCS_PATH,), "GCS_READ_FILE"),
    "input_subscription": Param("Input Pub/Sub subscription (streaming)", (SUBSCRIPTION,), "PUBSUB_SUBSCRIPTION"),
    "input_topic": Param("Input Pub/Sub topic (streaming)", (TOPIC,), "PUBSUB_TOPIC"),
    "output": Param("Prediction Parquet prefix", (GCS_PATH,), "GCS_WRITE_FILE"),
    "output_topic": Param("Prediction Pub/Sub topic (streaming)", (TOPIC,), "PUBSUB_TOPIC"),
    "dead_letter": Param("Dead-letter Parquet prefix or Pub/Sub topic", (f"{GCS_PATH}|{TOPIC}",)),
    "model": Param("Model checkpoint directory", (GCS_PATH,), "GCS_READ_FOLDER"),
    "run_date": Param("Day of a batch run, YYYY-MM-DD ({date} in the paths; default today)", (r"^\d{4}-\d{2}-\d{2}$",)),
    "run_id": Param("Id the run's files carry (default: made at launch)", (r"^[A-Za-z0-9][-A-Za-z0-9_.]*$",)),
    "device": Param("Inference device", (_anchored(job_options.DEVICE.pattern),)),
    "torch_threads": Param("Torch CPU threads per worker process", (POSITIVE_INT,)),
    "batch_size": Param("Maximum records per inference batch", (POSITIVE_INT,)),
    "batch_duration_s": Param("Longest wait to fill a batch, seconds (streaming)", (POSITIVE_NUMBER,)),
    "window_s": Param("Parquet file interval per worker, seconds (streaming)", (POSITIVE_NUMBER,)),
    "share_model": Param("Share one model per worker VM across its processes", (r"^(true|false)$",)),
    "model_copies": Param("Shared model copies per worker VM", (POSITIVE_INT,)),
    "metrics_port": Param("First /metrics port of the worker processes", (r"^(-1|0|[1-9][0-9]{0,4})$",)),
    "metrics_addr": Param("Bind address of /metrics", (r"^[A-Za-z0-9.:\-\[\]]+$",)),
}

# Beam's own options declared as template parameters (launch.sh and the schedule pass them).
BEAM_PARAMETERS: dict[str, Param] = {
    "sdk_container_image": Param("Worker image (this template's image)", (r"^[a-z0-9.\-]+(:[0-9]+)?/[^ ]+$",)),
    "sdk_location": Param("Beam SDK location (container: use the image's)", (r"^(container|default|gs://.+)$",)),
    "dataflow_service_options": Param("Dataflow service options (GPU: worker_accelerator=...)", (r"^[^,\s]+(,[^,\s]+)*$",)),
    "number_of_worker_harness_threads": Param("Threads per SDK worker process", (POSITIVE_INT,)),
}

# Flags of the options class that are not template parameters, and how the template gets their effect.
NOT_PARAMETERS: dict[str, str] = {
    "pushgateway": "a template's launcher submits the job and returns: `emmr-score report --job <id> --pushgateway` "
                   "pushes the summary after the job (deploy/scheduler/workflow.yaml)",
    "summary_json": "as pushgateway: `emmr-score report --job <id> --summary_json`",
}

EXAMPLE_BUCKET, EXAMPLE_PROJECT = "gs://emmr-example", "emmr-example"
EXAMPLES: dict[str, dict[str, str]] = {  # valid jobs: used to find the required flags and to check the regexes
    "batch": {
        "input": f"{EXAMPLE_BUCKET}/input/2026-01-01/*.parquet",
        "output": f"{EXAMPLE_BUCKET}/predictions/2026-01-01/part",
        "dead_letter": f"{EXAMPLE_BUCKET}/dead-letters/2026-01-01/part",
        "model": f"{EXAMPLE_BUCKET}/models/emmr-v1",
    },
    "streaming": {
        "input_subscription": f"projects/{EXAMPLE_PROJECT}/subscriptions/emmr-input",
        "output_topic": f"projects/{EXAMPLE_PROJECT}/topics/emmr-predictions",
        "dead_letter": f"projects/{EXAMPLE_PROJECT}/topics/emmr-dead-letters",
        "model": f"{EXAMPLE_BUCKET}/models/emmr-v1",
    },
}


def job_arguments() -> list[argparse.Action]:
    """The argparse actions of ScoringOptions (its own flags only, not Beam's)."""
    parser = argparse.ArgumentParser(add_help=False)
    job_options.ScoringOptions._add_argparse_args(parser)
    return [a for a in parser._actions if a.option_strings]


def beam_argument(name: str) -> argparse.Action:
    """Beam's own argparse action for `name` (searched over Beam's option classes)."""
    for cls in beam_options.PipelineOptions.__subclasses__():
        if cls.__module__ != beam_options.__name__:
            continue
        parser = argparse.ArgumentParser(add_help=False)
        cls._add_argparse_args(parser)
        for action in parser._actions:
            if action.dest == name:
                return action
    raise KeyError(f"Beam has no option {name!r}")


def takes_no_value(action: argparse.Action) -> bool:
    return action.nargs == 0


def argv_of(values: dict[str, str]) -> list[str]:
    return [f"--{k}={v}" for k, v in values.items()]


def is_valid(values: dict[str, str]) -> bool:
    try:
        job_options.check_options(beam_options.PipelineOptions(argv_of(values)))
    except job_options.OptionsError:
        return False
    return True


def required_flags() -> set[str]:
    """Flags without which every example job is invalid, as check_options decides."""
    for mode, values in EXAMPLES.items():
        if not is_valid(values):
            raise AssertionError(f"the {mode} example is not a valid job any more: update EXAMPLES ({values})")
    shared = set.intersection(*(set(v) for v in EXAMPLES.values()))
    return {name for name in shared
            if all(not is_valid({k: v for k, v in values.items() if k != name}) for values in EXAMPLES.values())}


def derived_regexes(action: argparse.Action) -> tuple[str, ...]:
    if action.choices:
        return ("^(" + "|".join(re.escape(str(c)) for c in action.choices) + ")$",)
    if action.type is int:
        return (INT,)
    if action.type is float:
        return (r"^-?([0-9]+(\.[0-9]*)?|\.[0-9]+)$",)
    return ()


def clean_help(text: str | None) -> str:
    return re.sub(r"\s+", " ", (text or "").replace("%%", "%")).strip()


def parameter(action: argparse.Action, spec: Param | None, optional: bool) -> dict:
    name = action.dest
    spec = spec or Param(name.replace("_", " ").capitalize())
    regexes = spec.regexes or derived_regexes(action)
    out = {"name": name, "label": spec.label, "helpText": clean_help(action.help) or spec.label,
           "isOptional": optional}
    if regexes:
        out["regexes"] = list(regexes)
    out["paramType"] = spec.param_type or "TEXT"
    return out


def metadata() -> dict:
    required = required_flags()
    params = []
    for action in job_arguments():
        name = action.dest
        if name in NOT_PARAMETERS:
            continue
        if takes_no_value(action):
            raise ValueError(f"--{name} takes no value, so it cannot be a template parameter: add it to "
                             "NOT_PARAMETERS with the template's way to get its effect")
        params.append(parameter(action, PARAMETERS.get(name), optional=name not in required))
    for name, spec in BEAM_PARAMETERS.items():
        params.append(parameter(beam_argument(name), spec, optional=True))
    names = [p["name"] for p in params]
    if len(names) != len(set(names)):
        raise ValueError(f"a parameter is declared twice: {names}")
    for values in EXAMPLES.values():  # the examples must pass the template's own validation
        for key, value in values.items():
            regexes = next(p.get("regexes", []) for p in params if p["name"] == key)
            if regexes and not any(re.fullmatch(r, value) for r in regexes):
                raise AssertionError(f"example {key}={value!r} fails the template's regexes {regexes}")
    return {
        "name": "EMMR scoring",
        "description": ("Scores multimodal records (visual, acoustic, text; any may be missing) for sentiment with "
                        "EMMR and flags key missing modalities. Batch: Parquet on Cloud Storage (--input). "
                        "Streaming: Pub/Sub (--input_subscription or --input_topic). Dead letters are always "
                        "written. Generated from beam_pipeline/options.py by deploy/make_template_metadata.py."),
        "parameters": params,
    }


def render() -> str:
    return json.dumps(metadata(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    parser.add_argument("--out", type=Path, default=METADATA)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                       str(args.out), "generated"))
            print(f"\n{args.out} is out of date: run python deploy/make_template_metadata.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(metadata()['parameters'])} parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
