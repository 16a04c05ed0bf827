"""Generate the Grafana dashboard deploy/grafana/emmr-dashboard.json (Grafana 10+ schema).

    python3 deploy/grafana/make_dashboard.py            # rewrite the file
    python3 deploy/grafana/make_dashboard.py --check    # exit 1 when the file is out of date

Edit the panels here, not in the JSON: tests/test_deploy.py regenerates it and compares, checks every metric
name against beam_pipeline/metrics.py, and tests/test_deploy_dashboard.py runs every query against a real
Prometheus fed by real pipeline runs. Standard library only.

Two sources, told apart by the `mode` label that deploy/prometheus/prometheus.yml adds:
- mode="streaming", work="committed": the streaming job's counts, committed Beam metrics served by `emmr-score
  export` (a retried bundle counts once), so rates over time;
- mode="streaming", work="attempted": the streaming workers' own /metrics, for histogram quantiles (latency, batch
  size: attempted work) and the model each worker serves;
- mode="batch": the summary `emmr-score report` pushes after each batch run (counters as totals of the last run, histograms as count and
  sum only), so "last run" bars and means.
Variables: DS_PROMETHEUS (the Prometheus data source) and job (Dataflow job names; All by default).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "emmr-dashboard.json"
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
S = 'mode="streaming", work="attempted", job=~"$job"'  # streaming workers' /metrics: latency, model (attempted work)
C = 'mode="streaming", work="committed", job=~"$job"'  # the streaming job's committed counts (emmr-score export)
B = 'mode="batch", job=~"$job"'  # selector of batch summaries
RATE = "$__rate_interval"


def target(expr: str, legend: str, instant: bool = False, fmt: str | None = None) -> dict:
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "range": not instant, "instant": instant}
    if fmt:
        t["format"] = fmt
    return t


def panel(kind: str, title: str, description: str, targets: list[dict], unit: str = "short", w: int = 8,
          h: int = 8, **options) -> dict:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    p = {
        "type": kind, "title": title, "description": description, "datasource": DS, "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "gridPos": {"w": w, "h": h},
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                  "showPoints": "never", "spanNulls": True}
        p["options"] = {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    elif kind == "bargauge":
        p["options"] = {"orientation": "horizontal", "displayMode": "basic", "showUnfilled": True,
                        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    elif kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "none", "textMode": "value_and_name"}
    elif kind == "table":
        p["options"] = {"showHeader": True}
        p["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True, "Value": True}}}]
    p.setdefault("options", {}).update(options)
    return p


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def quantiles(metric: str, legend: str, qs=(0.5, 0.95, 0.99)) -> list[dict]:
    return [target(f"histogram_quantile({q}, sum by (job, le) (rate({metric}_bucket{{{S}}}[{RATE}])))",
                   f"{{{{job}}}} p{int(q * 100)}{legend}") for q in qs]


def panels() -> list[dict]:
    return [
        row("Model and health"),
        panel("table", "Model version and device",
              "emmr_model_info: the model version each job serves, the device it runs on and the device it was "
              "asked for (a GPU job on cpu fires EmmrGpuNotUsed).",
              [target(f"max by (job, mode, version, device, requested_device) (emmr_model_info{{job=~\"$job\"}})",
                      "", instant=True, fmt="table")], w=12),
        panel("stat", "Streaming workers up", "Workers of the streaming job that answer /metrics.",
              [target('sum by (job) (up{job="emmr-streaming"})', "{{job}}")], w=4),
        panel("stat", "Model updates (streaming)",
              "Candidate models a streaming job checked for an in-place swap (--model_pattern, "
              "--model_updates_subscription): accepted ones serve from the next batch on; rejected ones were "
              "unreadable, corrupt or incompatible, and the model in service stayed (worker logs say why).",
              [target(f"sum by (job, outcome) (emmr_model_updates_total{{{C}}})", "{{job}} {{outcome}}")], w=8),
        panel("stat", "Model load time", "Seconds a worker took to load the checkpoint (emmr_model_load_seconds).",
              [target('max by (job, mode) (emmr_model_load_seconds{job=~"$job"})', "{{job}} ({{mode}})")],
              unit="s", w=8),
        panel("stat", "Last batch run: finished ago",
              "Time since each batch job last pushed its summary (the scheduled run should be under 26 h).",
              [target(f"time() - max by (job) (emmr_job_last_success_timestamp_seconds{{{B}}})", "{{job}}")],
              unit="s", w=8),
        panel("stat", "Last batch run: duration", "Wall time of each batch job's last run.",
              [target(f"max by (job) (emmr_job_duration_seconds{{{B}}})", "{{job}}")], unit="s", w=8),
        panel("stat", "Last batch run: records/s", "Records of the last run divided by its duration.",
              [target(f"sum by (job) (emmr_records_total{{{B}}}) / on (job) max by (job) "
                      f"(emmr_job_duration_seconds{{{B}}})", "{{job}}")], unit="cps", w=8),

        row("Throughput"),
        panel("timeseries", "Throughput (streaming)",
              "Records read and records out by outcome (predicted or dead_letter), per second.",
              [target(f"sum by (job) (rate(emmr_input_records_total{{{C}}}[{RATE}]))", "{{job}} in"),
               target(f"sum by (job, outcome) (rate(emmr_records_total{{{C}}}[{RATE}]))", "{{job}} {{outcome}}")],
              unit="cps", w=12),
        panel("bargauge", "Last batch run: records",
              "Records read and records out by outcome in each batch job's last run (in = predicted + dead_letter).",
              [target(f"sum by (job) (emmr_input_records_total{{{B}}})", "{{job}} in"),
               target(f"sum by (job, outcome) (emmr_records_total{{{B}}})", "{{job}} {{outcome}}")], w=12),

        row("Dead letters"),
        panel("timeseries", "Dead letters by reason (streaming)",
              "Dead letters per second by reason: validation and message error kinds (schemas/README.md) and the "
              "job's own: unreadable_file, unreadable_row_group, oversized_row_group, invalid_utf8, "
              "event_time_out_of_range, decode_error, inference_error, non_finite_output (README, Scoring job).",
              [target(f"sum by (job, reason) (rate(emmr_dead_letters_total{{{C}}}[{RATE}]))", "{{job}} {{reason}}")],
              unit="cps", w=8),
        panel("bargauge", "Dead letters by reason (last batch run)", "Dead letters of each batch job's last run by reason.",
              [target(f"sum by (job, reason) (emmr_dead_letters_total{{{B}}})", "{{job}} {{reason}}")], w=8),
        panel("timeseries", "Dead-letter rate", "Share of records that end as dead letters (alert above 5%).",
              [target(f'sum by (job) (rate(emmr_records_total{{{C}, outcome="dead_letter"}}[{RATE}])) / '
                      f"sum by (job) (rate(emmr_records_total{{{C}}}[{RATE}]))", "{{job}} (streaming)"),
               target(f'sum by (job) (emmr_records_total{{{B}, outcome="dead_letter"}}) / '
                      f"sum by (job) (emmr_records_total{{{B}}})", "{{job}} (last batch run)")],
              unit="percentunit", w=8),

        row("Missing modalities"),
        panel("timeseries", "Missing rate per modality",
              "Share of scored records that missed each modality (a record missing two counts under both).",
              [target(f"sum by (job, modality) (rate(emmr_missing_modalities_total{{{C}}}[{RATE}])) / on (job) "
                      f'group_left sum by (job) (rate(emmr_records_total{{{C}, outcome="predicted"}}[{RATE}]))',
                      "{{job}} {{modality}}"),
               target(f"sum by (job, modality) (emmr_missing_modalities_total{{{B}}}) / on (job) group_left "
                      f'sum by (job) (emmr_records_total{{{B}, outcome="predicted"}})', "{{job}} {{modality}} (last batch run)")],
              unit="percentunit", w=12),
        panel("timeseries", "Key-missing rate per modality",
              "Among scored records missing a modality, the share whose absence flips the prediction (the "
              "modality was key). The dashed 7-day level is what EmmrKeyMissingRateDrift compares with.",
              [target(f"sum by (job, modality) (rate(emmr_key_missing_total{{{C}}}[{RATE}])) / "
                      f"sum by (job, modality) (rate(emmr_missing_modalities_total{{{C}}}[{RATE}]))",
                      "{{job}} {{modality}}"),
               target(f"sum by (job, modality) (rate(emmr_key_missing_total{{{C}}}[7d])) / "
                      f"sum by (job, modality) (rate(emmr_missing_modalities_total{{{C}}}[7d]))",
                      "{{job}} {{modality}} 7-day level"),
               target(f"sum by (job, modality) (emmr_key_missing_total{{{B}}}) / "
                      f"sum by (job, modality) (emmr_missing_modalities_total{{{B}}})",
                      "{{job}} {{modality}} (last batch run)")],
              unit="percentunit", w=12),

        row("Predictions"),
        panel("timeseries", "Prediction distribution (streaming)", "Share of predictions per predicted label.",
              [target(f"sum by (job, label) (rate(emmr_predictions_total{{{C}}}[{RATE}])) / on (job) group_left "
                      f"sum by (job) (rate(emmr_predictions_total{{{C}}}[{RATE}]))", "{{job}} {{label}}")],
              unit="percentunit", w=8),
        panel("bargauge", "Prediction distribution (last batch run)", "Predictions per label in each batch job's last run.",
              [target(f"sum by (job, label) (emmr_predictions_total{{{B}}})", "{{job}} {{label}}")], w=8),
        panel("timeseries", "Decided by the ensemble",
              "Share of predictions decided by the ensemble branch (Eq. 13), i.e. where the consistency check fired.",
              [target(f"sum by (job) (rate(emmr_ensemble_used_total{{{C}}}[{RATE}])) / "
                      f'sum by (job) (rate(emmr_records_total{{{C}, outcome="predicted"}}[{RATE}]))', "{{job}} (streaming)"),
               target(f"sum by (job) (emmr_ensemble_used_total{{{B}}}) / "
                      f'sum by (job) (emmr_records_total{{{B}, outcome="predicted"}})', "{{job}} (last batch run)")],
              unit="percentunit", w=8),

        row("Batching and latency"),
        panel("timeseries", "Batch size", "Records per inference call: quantiles and mean (streaming), mean of the "
              "last run (batch). Streaming batches close at --batch_size or after --batch_duration_s.",
              [*quantiles("emmr_batch_size_records", "", qs=(0.5, 0.95)),
               target(f"sum by (job) (rate(emmr_batch_size_records_sum{{{S}}}[{RATE}])) / "
                      f"sum by (job) (rate(emmr_batch_size_records_count{{{S}}}[{RATE}]))", "{{job}} mean"),
               target(f"sum by (job) (emmr_batch_size_records_sum{{{B}}}) / "
                      f"sum by (job) (emmr_batch_size_records_count{{{B}}})", "{{job}} mean (last batch run)")],
              w=8),
        panel("timeseries", "Inference latency", "Wall time of one model call (padding, model, back to numpy): "
              "quantiles (streaming), mean of the last run (batch). Alert: p99 or batch mean above 2.5 s.",
              [*quantiles("emmr_inference_latency_seconds", ""),
               target(f"sum by (job) (emmr_inference_latency_seconds_sum{{{B}}}) / "
                      f"sum by (job) (emmr_inference_latency_seconds_count{{{B}}})", "{{job}} mean (last batch run)")],
              unit="s", w=8),
        panel("timeseries", "End-to-end latency (streaming)",
              "Seconds from a message's publication to its prediction. Alert: p95 above 30 s.",
              quantiles("emmr_end_to_end_latency_seconds", ""), unit="s", w=8),
    ]


def layout(items: list[dict]) -> list[dict]:
    """Give each panel its place: rows full width, panels left to right, wrapping at 24 columns."""
    x = y = row_h = 0
    for i, p in enumerate(items, start=1):
        p["id"] = i
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            y, x, row_h = y + row_h, 0, 0
        p["gridPos"].update(x=x, y=y)
        if p["type"] == "row":
            y += h
        else:
            x, row_h = x + w, max(row_h, h)
    return items


def dashboard() -> dict:
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus",
                      "pluginName": "Prometheus"}],
        "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                       {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}],
        "uid": "emmr-scoring",
        "title": "EMMR scoring",
        "description": "EMMR sentiment scoring: throughput, dead letters, missing and key-missing modalities, "
                       "predictions, batching and latency, model and device. Generated by deploy/grafana/make_dashboard.py.",
        "tags": ["emmr", "beam", "dataflow"],
        "timezone": "utc",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "annotations": {"list": [
            {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
             "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [],
        "templating": {"list": [
            {"name": "DS_PROMETHEUS", "label": "Data source", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
            {"name": "job", "label": "Job", "type": "query", "datasource": DS,
             "definition": "label_values(emmr_input_records_total, job)",
             "query": {"query": "label_values(emmr_input_records_total, job)", "refId": "job"},
             "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"},
             "refresh": 2, "sort": 1, "hide": 0, "regex": "", "options": []},
        ]},
        "panels": layout(panels()),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed file instead of writing it")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text() if OUT.exists() else ""
        if current != text:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), text.splitlines(True), str(OUT),
                                                       "generated"))
            print(f"\n{OUT} is out of date: run python3 deploy/grafana/make_dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
