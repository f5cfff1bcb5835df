"""Dagster definitions only, one package per stage; each exposes `build_defs(profile)`."""
