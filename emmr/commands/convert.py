"""Convert a published data set to input v1 Parquet: OUT/<split>/, OUT/dataset.json, OUT/split.json.

Formats (one sub-command each; `emmr convert FORMAT --help` for details):
  mosi-utterance-csv  CMU-MOSI utterance-level CSVs (bc-LSTM release): train and dev, as the files give them
  mmsa                MMSA's aligned_50.pkl / unaligned_50.pkl (a pickle: only for files you trust)
  csd                 CMU Multimodal SDK .csd sequences, one per modality plus a labels .csd, aligned per segment

dataset.json lists the modalities (name, dim, max_len) and label names to train with, the label mapping,
the source files with their SHA-256, split counts and what was dropped; split.json lists the videos of
each split. Examples:
  emmr convert mosi-utterance-csv --src ../shared/datasets/cmu-mosi-utterance --out data/mosi
  emmr convert mmsa --src MOSI/Processed/unaligned_50.pkl --out data/mosi-mmsa --labels sentiment2
  emmr convert csd --modality visual=CMU_MOSI_Visual_Facet_41.csd --modality acoustic=CMU_MOSI_COVAREP.csd \\
      --modality text=CMU_MOSI_TimestampedWordVectors.csd --labels-csd CMU_MOSI_Opinion_Labels.csd \\
      --out data/mosi-csd --max-len visual=100 --max-len acoustic=150 --max-len text=25 --non-finite zero
"""

from __future__ import annotations

import argparse

from emmr.convert import (
    DEFAULT_TEST_FRACTION,
    DEFAULT_VAL_FRACTION,
    LABEL_SCHEMES,
    NON_FINITE_POLICIES,
    SENTIMENT_SCHEMES,
    ZERO_POLICIES,
    parse_max_lens,
)

_RAW = argparse.RawDescriptionHelpFormatter


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed of the split by video (default 0)")
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help=f"share of records for validation, whole videos (default {DEFAULT_VAL_FRACTION})")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                   help=f"share of records for test, whole videos (default {DEFAULT_TEST_FRACTION})")


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (one folder per split, dataset.json, split.json)")
    p.add_argument("--non-finite", choices=NON_FINITE_POLICIES, default="fail",
                   help="NaN or infinite feature values: fail naming the record (default), or replace by 0 and count")


def _label_args(p: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    p.add_argument("--labels", choices=choices, default="sentiment2",
                   help="label mapping (emmr/convert/__init__.py documents each and its source; default sentiment2)")
    p.add_argument("--zero", choices=ZERO_POLICIES, default="positive",
                   help="sentiment2 only: a score of exactly 0 counts as positive (MMSA 'Has0', default) or is dropped (MMSA 'Non0')")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="format", required=True, metavar="FORMAT")

    from emmr.convert import csd, mmsa, mosi_csv

    q = sub.add_parser("mosi-utterance-csv", help="CMU-MOSI utterance-level CSVs (bc-LSTM release)",
                       description=mosi_csv.__doc__, formatter_class=_RAW)
    q.add_argument("--src", required=True, help="folder with {audio,video,text}_{train,dev}.csv and transcripts.csv")
    _common_args(q)
    q.set_defaults(convert_run=_run_mosi)

    q = sub.add_parser("mmsa", help="MMSA feature pickle (trusted files only: loading a pickle runs code)",
                       description=mmsa.__doc__, formatter_class=_RAW)
    q.add_argument("--src", required=True, help="aligned_50.pkl or unaligned_50.pkl: a file you TRUST (pickle runs code on load)")
    _common_args(q)
    _label_args(q, SENTIMENT_SCHEMES)
    q.add_argument("--lengths", choices=mmsa.LENGTH_MODES, default="auto",
                   help="sequence lengths: the file's *_lengths / text_bert mask, else the non-zero span (auto, default); "
                        "all steps (full); always the non-zero span (nonzero)")
    q.set_defaults(convert_run=_run_mmsa)

    q = sub.add_parser("csd", help="CMU Multimodal SDK .csd sequences aligned to labelled segments",
                       description=csd.__doc__, formatter_class=_RAW)
    q.add_argument("--modality", action="append", required=True, metavar="NAME=FILE.csd",
                   help="a modality and its sequence, in model order (repeat; e.g. visual=..., acoustic=..., text=...)")
    q.add_argument("--labels-csd", required=True, help="the labels sequence (one row per labelled segment)")
    _common_args(q)
    _label_args(q, tuple(sorted(LABEL_SCHEMES)))
    q.add_argument("--label-column", type=int, default=0, help="sentiment schemes: column of the score (default 0)")
    q.add_argument("--emotion-names", default=None,
                   help="iemocap schemes with numeric label columns: comma-separated emotion of each column "
                        "(default: the labels file's 'dimension names' metadata)")
    q.add_argument("--max-len", action="append", metavar="NAME=N",
                   help="keep at most the first N frames of a modality per segment (repeat; default: the longest)")
    q.add_argument("--tolerance", type=float, default=csd.DEFAULT_TOLERANCE,
                   help=f"seconds a frame may overhang its segment and still count as within (default {csd.DEFAULT_TOLERANCE})")
    _split_args(q)
    q.add_argument("--folds", default=None,
                   help='JSON file {"train": [video ids], "val": [...], "test": [...]} instead of a seeded split')
    q.set_defaults(convert_run=_run_csd)


def _run_mosi(args: argparse.Namespace) -> dict:
    from emmr.convert import mosi_csv

    return mosi_csv.convert(args.src, args.out, non_finite=args.non_finite)


def _run_mmsa(args: argparse.Namespace) -> dict:
    from emmr.convert import mmsa

    return mmsa.convert(args.src, args.out, labels=args.labels, zero=args.zero, lengths=args.lengths,
                        non_finite=args.non_finite)


def _run_csd(args: argparse.Namespace) -> dict:
    from emmr.convert import csd

    modalities = []
    for item in args.modality:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--modality {item!r}: expected NAME=FILE.csd")
        modalities.append((name, path))
    names = tuple(n for n, _ in modalities)
    emotion_names = [e.strip() for e in args.emotion_names.split(",")] if args.emotion_names else None
    return csd.convert(modalities, args.labels_csd, args.out, labels=args.labels, zero=args.zero,
                       label_column=args.label_column, emotion_names=emotion_names, seed=args.seed,
                       val_fraction=args.val_fraction, test_fraction=args.test_fraction, folds=args.folds,
                       max_len=parse_max_lens(args.max_len, names), non_finite=args.non_finite,
                       tolerance=args.tolerance)


def run(args: argparse.Namespace) -> int:
    dataset = args.convert_run(args)
    counts = ", ".join(f"{n} {s['records']}" for n, s in dataset["splits"].items())
    mods = ", ".join(f"{m['name']}={m['dim']}x{m['max_len']}" for m in dataset["modalities"])
    print(f"{dataset['converter']}: {counts} records to {args.out}; modalities {mods}; labels {dataset['label_names']}")
    return 0
