"""EMMR scoring's data contracts (version 1): input records, predictions, dead letters, Pub/Sub messages."""

from schemas.arrow import (
    MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
    dead_letter_schema,
    input_schema,
    modality_type,
    prediction_schema,
    schema_name_version,
)
from schemas.message import MessageError, decode_message, encode_record
from schemas.modality import ModalitySpec, check_modalities
from schemas.validate import RecordError, RecordValidationError, ValidationResult, validate_input, validate_output

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "MessageError",
    "ModalitySpec",
    "RecordError",
    "RecordValidationError",
    "ValidationResult",
    "check_modalities",
    "dead_letter_schema",
    "decode_message",
    "encode_record",
    "input_schema",
    "modality_type",
    "prediction_schema",
    "schema_name_version",
    "validate_input",
    "validate_output",
]
