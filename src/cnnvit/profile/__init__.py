"""Efficiency profile (DESIGN.md C5): cost, speed, memory, load/compile time, size sweep."""

from cnnvit.profile.cost import FLOP_COUNTER_NOTE, Cost, FlopCount, count_flops, measure_cost
from cnnvit.profile.profiler import (
    DEFAULT_SIZES,
    ModelProfile,
    SizePoint,
    profile_model,
    profile_rows,
    profile_run,
    profile_sizes,
    profile_table,
    read_profiles_json,
    write_profiles_json,
)
from cnnvit.profile.speed import Clock, MemoryPeak, RepeatPlan, Spread, Timing

__all__ = [
    "DEFAULT_SIZES",
    "FLOP_COUNTER_NOTE",
    "Clock",
    "Cost",
    "FlopCount",
    "MemoryPeak",
    "ModelProfile",
    "RepeatPlan",
    "SizePoint",
    "Spread",
    "Timing",
    "count_flops",
    "measure_cost",
    "profile_model",
    "profile_rows",
    "profile_run",
    "profile_sizes",
    "profile_table",
    "read_profiles_json",
    "write_profiles_json",
]
