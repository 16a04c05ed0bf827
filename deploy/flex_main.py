"""Flex-template entry point (the image's FLEX_TEMPLATE_PYTHON_PY_FILE).

Dataflow's launcher runs this file with the template's parameters and its own options (--runner, --project,
--region, --temp_location, ...) as flags; `beam_pipeline.run.main` checks them, submits the job and returns (a
flex-template launcher must not wait for its job: a streaming launch would hang until it timed out). The batch
summary, the conservation check and the Pushgateway push come from `emmr-score report --job <id>` after the job
(deploy/scheduler/workflow.yaml runs it for the scheduled run).
"""

import sys

from beam_pipeline.run import main

if __name__ == "__main__":
    sys.exit(main())
