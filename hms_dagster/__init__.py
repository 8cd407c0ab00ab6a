"""Dagster orchestration of the HMS platform: assets per stage, partitions, resources, checks, sensors, CLI."""
