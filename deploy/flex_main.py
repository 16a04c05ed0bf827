"""Flex-template entry point (the image's FLEX_TEMPLATE_PYTHON_PY_FILE).

Dataflow's launcher runs this file with the template's parameters and its own options (--runner, --project,
--region, --temp_location, ...) as flags; `beam_pipeline.run.main` checks them, submits the job and, for a batch
run, waits for it so that it can log the summary and push it to --pushgateway (the launcher VM therefore stays
up while the batch job runs, and must reach the Pushgateway).
"""

import sys

from beam_pipeline.run import main

if __name__ == "__main__":
    sys.exit(main())
