"""What /metrics exposes (Prometheus text format, prometheus-client), one registry per server.

    galaxy_requests_total                      answered requests
    galaxy_request_errors_total{kind}          failed ones, by error class
    galaxy_request_seconds                     submit -> answer, queueing included (histogram)
    galaxy_cluster_seconds                     dispatch to the ranks -> answer (histogram)
    galaxy_rank_request_seconds{device}        each rank's wall time per request (histogram)
    galaxy_block_seconds_total{device,block}   time inside each block kind, per device
    galaxy_link_bytes_total{src,dst}           bytes the ranks sent each other (point-to-point)
    galaxy_plan_info{plan,bundle,epoch,devices,stages} = 1 for the plan in force
    galaxy_queued_requests, galaxy_in_flight_requests, galaxy_in_flight_requests_peak
    galaxy_refused_ranks_total, galaxy_lost_ranks_total
    galaxy_recoveries_total{kind}              re-plans that served (kind: lost | straggler)
    galaxy_recovery_seconds{phase}             the last recovery's phases (serve/record.py)
    galaxy_moved_bytes_total{source}           weights rebuilt on switches: kept | peer | host, and
                                               full_reload (what reloading every shard would have moved)
    galaxy_http_requests_total{path,status}
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    def __init__(self):
        disable_created_metrics()  # the *_created series only add noise to a scrape
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("galaxy_requests", "Answered requests", registry=registry)
        self.errors = Counter("galaxy_request_errors", "Failed requests", ["kind"], registry=registry)
        self.latency = Histogram("galaxy_request_seconds", "Request latency, queueing included",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.cluster = Histogram("galaxy_cluster_seconds", "From dispatch to the ranks to the answer",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.rank_latency = Histogram("galaxy_rank_request_seconds", "A rank's wall time per request",
                                      ["device"], buckets=LATENCY_BUCKETS, registry=registry)
        self.blocks = Counter("galaxy_block_seconds", "Seconds inside each block kind", ["device", "block"],
                              registry=registry)
        self.link_bytes = Counter("galaxy_link_bytes", "Bytes sent between ranks", ["src", "dst"],
                                  registry=registry)
        self.plan = Gauge("galaxy_plan_info", "The plan in force", ["plan", "bundle", "epoch", "devices", "stages"],
                          registry=registry)
        self.queued = Gauge("galaxy_queued_requests", "Requests waiting", registry=registry)
        self.in_flight = Gauge("galaxy_in_flight_requests", "Requests on the ranks", registry=registry)
        self.in_flight_peak = Gauge("galaxy_in_flight_requests_peak", "Most requests on the ranks at once",
                                    registry=registry)
        self.refusals = Counter("galaxy_refused_ranks", "Connections refused (token, plan)", registry=registry)
        self.lost_ranks = Counter("galaxy_lost_ranks", "Ranks lost", registry=registry)
        self.recoveries = Counter("galaxy_recoveries", "Re-plans that served", ["kind"], registry=registry)
        self.recovery_phases = Gauge("galaxy_recovery_seconds", "The last recovery's phases", ["phase"],
                                     registry=registry)
        self.moved_bytes = Counter("galaxy_moved_bytes", "Weight bytes of rebuilt shards, by where they came from",
                                   ["source"], registry=registry)
        self._peak = 0
        self.http = Counter("galaxy_http_requests", "HTTP requests", ["path", "status"], registry=registry)

    def set_in_flight(self, count: int) -> None:
        self.in_flight.set(count)
        if count > self._peak:
            self._peak = count
            self.in_flight_peak.set(count)

    def observe_request(self, latency_s: float, cluster_s: float) -> None:
        self.requests.inc()
        self.latency.observe(latency_s)
        self.cluster.observe(cluster_s)

    def record_times(self, device: str, times: dict, devices: tuple[str, ...]) -> None:
        """One rank's `times` report: its wall time, block times and bytes sent per peer."""
        self.rank_latency.labels(device=device).observe(float(times.get("wall_s", 0.0)))
        for block, seconds in (times.get("blocks") or {}).items():
            self.blocks.labels(device=device, block=block).inc(float(seconds))
        for peer, sent in (times.get("sent_bytes") or {}).items():
            if 0 <= int(peer) < len(devices):
                self.link_bytes.labels(src=device, dst=devices[int(peer)]).inc(int(sent))

    def record_recovery(self, record) -> None:
        self.recoveries.labels(kind=record.kind).inc()
        for phase, seconds in record.phases().items():
            if seconds is not None:
                self.recovery_phases.labels(phase=phase).set(seconds)
        moved = record.measured_bytes()
        for source, count in (("kept", moved.kept), ("peer", moved.peer), ("host", moved.host),
                              ("full_reload", moved.full)):
            self.moved_bytes.labels(source=source).inc(count)

    def set_plan(self, bundle, epoch: int) -> None:
        self.plan.clear()
        self.plan.labels(plan=bundle.sha[:12], bundle=str(bundle.path), epoch=str(epoch),
                         devices=",".join(bundle.devices), stages=str(bundle.stages)).set(1)

    def text(self) -> bytes:
        return generate_latest(self.registry)
