"""`fine-deploy sample`: denoising loops over exported artifacts, plans and supernets, image grids, and
the noise schedule that travels with every export."""

from __future__ import annotations

from fine_deploy.sample.api import SampleResult, open_source, sample
from fine_deploy.supernet.schedule import Schedule, make_scheduler, read_scheduler, training_schedule, write_scheduler

__all__ = ["SampleResult", "Schedule", "make_scheduler", "open_source", "read_scheduler", "sample",
           "training_schedule", "write_scheduler"]
