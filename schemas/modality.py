"""The description of one modality: its name, feature dimension and maximum sequence length."""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
RESERVED_COLUMNS = frozenset({"id", "label", "event_time", "dropped"})


@dataclass(frozen=True)
class ModalitySpec:
    """A modality of the input record: column `name` holds a sequence of at most `max_len` vectors of `dim` floats."""

    name: str
    dim: int
    max_len: int

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name in RESERVED_COLUMNS or self.name.startswith(("key_", "evidence_")):
            raise ValueError(f"modality name {self.name!r}: expected lower-case letters, digits, '_', not a reserved column")
        if self.dim < 1 or self.max_len < 1:
            raise ValueError(f"modality {self.name!r}: dim and max_len must be positive, got {self.dim} and {self.max_len}")

    def to_dict(self) -> dict:
        return {"name": self.name, "dim": self.dim, "max_len": self.max_len}

    @classmethod
    def from_dict(cls, d: dict) -> "ModalitySpec":
        return cls(name=str(d["name"]), dim=int(d["dim"]), max_len=int(d["max_len"]))


def check_modalities(modalities: tuple[ModalitySpec, ...]) -> tuple[ModalitySpec, ...]:
    """Validate a modality tuple: at least two modalities, unique names."""
    modalities = tuple(modalities)
    names = [m.name for m in modalities]
    if len(modalities) < 2:
        raise ValueError(f"at least two modalities are needed, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"modality names must be unique, got {names}")
    return modalities
