"""Partitions shared by every fold-level asset: ``fold_0 ... fold_{k-1}`` (patient-grouped folds)."""

from __future__ import annotations

import dagster as dg

from hms_core.config import PlatformConfig


def fold_partitions(cfg: PlatformConfig) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition(cfg.fold_names)


def fold_index(partition_key: str) -> int:
    """``'fold_3'`` -> 3, with a clear error for anything else."""
    prefix, _, num = partition_key.partition("_")
    if prefix != "fold" or not num.isdigit():
        raise ValueError(f"Invalid partition key {partition_key!r}; expected 'fold_<k>' such as 'fold_0'")
    return int(num)
