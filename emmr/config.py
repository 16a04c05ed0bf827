"""The model's configuration: modalities, sizes, classes and members; the `paper`, `small` and `mosi` presets.

The configuration travels with every checkpoint (config.json), so serving cannot drift from training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from schemas.modality import ModalitySpec, check_modalities

MEMBERS = ("tf", "ae", "mmin")
MEMBER_ENCODERS = ("shared", "own")
FUSIONS = ("attention", "max", "average")


def member_kind(name: str) -> str:
    """A member's architecture: "tf#2" is a second member of kind "tf", with its own weights."""
    return name.partition("#")[0]


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build the network. Defaults are the paper's (Section 4.2)."""

    modalities: tuple[ModalitySpec, ...]
    label_names: tuple[str, ...] = ("negative", "neutral", "positive")
    hidden: int = 300  # h: projection size of every modality (Eq. 1)
    heads: int = 4  # attention heads (Eq. 1, Eq. 7)
    ffn: int = 1200  # feed-forward width of the TF member (Eq. 7)
    dropout: float = 0.1
    norm_first: bool = True  # pre-LayerNorm attention blocks, the residual keeps each step's magnitude (docs/model.md)
    ae_dims: tuple[int, ...] = (256, 128, 64)  # AE member: h-256-128-64-128-256-h (Eq. 5)
    mmin_blocks: int = 5  # MMIN member: cascade of residual autoencoders (Eq. 6), each with the AE's layer sizes
    members: tuple[str, ...] = MEMBERS  # the first member is the backbone that the consistency check reads
    fusion: str = "attention"  # how the ensemble combines members: Eq. 12 ("attention"), or "max" / "average"
    member_encoders: str = "shared"  # the other members read the backbone's Eq. 1-2 ("shared") or their own ("own")

    def __post_init__(self) -> None:
        object.__setattr__(self, "modalities", check_modalities(tuple(self.modalities)))
        object.__setattr__(self, "label_names", tuple(self.label_names))
        object.__setattr__(self, "members", tuple(self.members))
        object.__setattr__(self, "ae_dims", tuple(self.ae_dims))
        if len(self.label_names) < 2:
            raise ValueError(f"at least two classes are needed, got {self.label_names}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        unknown = [m for m in self.members if member_kind(m) not in MEMBERS]
        if unknown or not self.members or len(set(self.members)) != len(self.members):
            raise ValueError(f"members must be distinct names from {MEMBERS}, each optionally with a suffix #N for "
                             f"another member of that kind (tf#2), got {self.members}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.member_encoders not in MEMBER_ENCODERS:
            raise ValueError(f"member_encoders must be one of {MEMBER_ENCODERS}, got {self.member_encoders!r}")

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.modalities)

    @property
    def ensemble(self) -> bool:
        return len(self.members) > 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modalities"] = [m.to_dict() for m in self.modalities]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        d["modalities"] = tuple(ModalitySpec.from_dict(m) for m in d["modalities"])
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**d)

    def with_(self, **changes) -> "ModelConfig":
        return replace(self, **changes)

    def backbone_only(self) -> "ModelConfig":
        """Training stage 1's model: the first member alone. The fields that only shape an ensemble are reset, so
        that every method with the same backbone has the same stage-1 config (emmr/compare.py shares it)."""
        return replace(self, members=self.members[:1], fusion="attention", member_encoders="shared")


def _mods(*specs: tuple[str, int, int]) -> tuple[ModalitySpec, ...]:
    return tuple(ModalitySpec(n, d, l) for n, d, l in specs)


PRESETS: dict[str, ModelConfig] = {
    # The paper's sizes: CMU-MOSI features 709 (visual, Facet), 33 (acoustic, COVAREP), 768 (text, BERT).
    "paper": ModelConfig(modalities=_mods(("visual", 709, 100), ("acoustic", 33, 150), ("text", 768, 25))),
    # Small enough to train in seconds on two CPU cores: tests, the demo, synthetic studies.
    "small": ModelConfig(
        modalities=_mods(("visual", 16, 8), ("acoustic", 12, 10), ("text", 20, 6)),
        hidden=32,
        heads=4,
        ffn=64,
        dropout=0.1,
        ae_dims=(24, 16, 8),
        mmin_blocks=5,
        # Chosen on the synthetic development split (docs/synthetic.md, "Members on their own encoders"): two more TF
        # members, each on its own Eq. 1-2, make the ensemble a better second opinion than the paper's AE and MMIN on
        # the backbone's encodings (EMMR's net wins over TF on records missing a modality 43 -> 79, 4 seeds).
        members=("tf", "tf#2", "tf#3"),
        member_encoders="own",
    ),
    # CMU-MOSI utterance-level features in ../shared/datasets (one step per modality, binary labels).
    "mosi": ModelConfig(
        modalities=_mods(("visual", 100, 1), ("acoustic", 73, 1), ("text", 100, 1)),
        label_names=("negative", "positive"),
        hidden=64,
        heads=4,
        ffn=256,
        dropout=0.2,
        ae_dims=(48, 32, 16),
    ),
}


# Training settings that belong to a preset (fields of emmr.train.TrainConfig), applied before the YAML's `train:`.
PRESET_TRAINING: dict[str, dict] = {
    # Chosen on the synthetic development split (seeds 201-203, docs/synthetic.md, "Averaged weights"): validating and
    # keeping the weights' moving average, selected on validation log-likelihood, raised the flag's AUROC in 6 seeds of 6.
    "small": {"weight_average": 0.995, "select_metric": "log_likelihood"},
    # Selected on dev by the written-down search of docs/mosi/search.py (docs/results.md, "The search"), on EMMR v2:
    # standardised features with Gaussian noise of one standard deviation in training had the best dev accuracy
    # averaged over the missing rates (std-noise1.0 in docs/mosi/search.jsonl).
    "mosi": {"standardize": True, "feature_noise": 1.0},
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None

