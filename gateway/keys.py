"""Typed aiohttp AppKeys: everything the handlers reach hangs off the app, nothing is global."""

from __future__ import annotations

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from gateway.admission import Admission
from gateway.config import GatewayConfig
from gateway.kvindex.consumer import KVIndexConsumer
from gateway.kvindex.index import KVIndex
from gateway.metrics import Metrics
from gateway.router.base import RoutingPolicy
from gateway.router.prompts import PromptHasher
from gateway.awareness.runs import Awareness
from gateway.scheduler.scheduler import Scheduler
from gateway.awareness.tagged import TaggedCalls
from gateway.state.store import WorkflowStore
from gateway.state.template_store import TemplateStore
from gateway.workers.pool import WorkerPool

CONFIG = web.AppKey("config", GatewayConfig)
ADMISSION = web.AppKey("admission", Admission)
METRICS = web.AppKey("metrics", Metrics)
POLICY = web.AppKey("policy", RoutingPolicy)
HASHER = web.AppKey("hasher", PromptHasher)
REDIS = web.AppKey("redis", Redis)
SESSION = web.AppKey("session", aiohttp.ClientSession)
STORE = web.AppKey("store", WorkflowStore)
FOLLOWERS = web.AppKey("followers", WorkflowStore)  # the same keys over the SSE followers' own pool
TEMPLATES = web.AppKey("templates", TemplateStore)
POOL = web.AppKey("pool", WorkerPool)
SCHEDULER = web.AppKey("scheduler", Scheduler)
AWARENESS = web.AppKey("awareness", Awareness)
TAGGED = web.AppKey("tagged_calls", TaggedCalls)
KV_INDEX = web.AppKey("kv_index", KVIndex)
KV_CONSUMER = web.AppKey("kv_consumer", KVIndexConsumer)
