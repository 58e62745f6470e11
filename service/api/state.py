"""Typed application state."""

from __future__ import annotations

from collections import Counter

import asyncpg
from aiohttp import web

from service.ai.dispatch import Dispatcher
from service.config import Settings
from service.entities.store import EntityStore
from service.jobs.events import EventHub
from service.jobs.grouped import Grouped
from service.jobs.store import JobRead, JobStore, JobVersion
from service.metrics import Metrics

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
ENTITIES = web.AppKey("entities", EntityStore)
JOBS = web.AppKey("jobs", JobStore)
# Reads of single jobs, grouped: concurrent reads share one round trip.
JOB_READS: web.AppKey[Grouped[JobRead, JobVersion | None]] = web.AppKey("job_reads")
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
EVENT_HUB = web.AppKey("event_hub", EventHub)
METRICS = web.AppKey("metrics", Metrics)
# Open event streams per user id, to bound them.
OPEN_STREAMS = web.AppKey("open_streams", Counter[str])
