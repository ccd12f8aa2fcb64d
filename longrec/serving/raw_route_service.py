"""``RawRouteFirst``: the BentoML service class of the memory shards, whose server hands requests for the
raw-bytes route (``longrec.serving.shard_transport``) straight to that route's app, ahead of BentoML's
middleware."""

from __future__ import annotations

import bentoml

from longrec.serving.shard_transport import RAW_MOUNT, dispatch_first

__all__ = ["RawRouteFirst"]


class RawRouteFirst(bentoml.Service):
    """A BentoML service whose app mounted at ``RAW_MOUNT`` answers its requests before BentoML's
    middleware sees them; every other route (APIs, health, ``/metrics``) goes through BentoML as usual.

    That stack (tracing, access log, request metrics, traffic control, routing) took most of a shard's
    CPU per gather: 0.76 ms per 2,000-slot gather as a mounted app, 0.28 ms with this class
    (``benchmarks/shard_server_cpu.py``), twice per LMN request, on the cores the ranker computes on. The
    route keeps its own latency metric (``longrec_memory_shard_gather_seconds``) and the ranker times every
    call it makes (``longrec_memory_shard_latency_seconds``). Use it as
    ``bentoml.service(..., service_class=RawRouteFirst)``.
    """

    __slots__ = ()  # bentoml.Service is a slotted attrs class

    def to_asgi(self, is_main: bool = True):
        raw = [app for app, path, _ in self.mount_apps if path == RAW_MOUNT]
        app = super().to_asgi(is_main)
        return dispatch_first(RAW_MOUNT, raw[0], app) if raw else app
