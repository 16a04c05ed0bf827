"""The scoring job: EMMR sentiment scoring with key-missing-modality flags, as an Apache Beam pipeline.

Entry point: `python -m beam_pipeline.run` (console script `emmr-score`); see beam_pipeline/run.py.
"""

from emmr import __version__ as _emmr_version

# Written into every dead letter (dead letter v1 `pipeline_version`): the job and the model code ship together.
PIPELINE_VERSION = f"emmr-score/{_emmr_version}"
