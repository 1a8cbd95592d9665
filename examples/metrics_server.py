"""Expose distlb's Prometheus metrics while a token bucket works.

    pip install 'distlb[metrics,embedded]'
    python examples/metrics_server.py

It serves the metrics on http://localhost:9100/metrics while the bucket works (about 3 s:
`curl -s localhost:9100/metrics | grep distlb` from another shell meanwhile), then prints
them once and exits.
"""

import time

import prometheus_client
import redis

import distlb.metrics
from distlb import TokenBucket
from distlb.embedded import EmbeddedServer

distlb.metrics.enable()
prometheus_client.start_http_server(9100)
with EmbeddedServer() as server:
    bucket = TokenBucket(redis.Redis.from_url(server.url), "api", rate_per_s=5, burst=5)
    for _ in range(30):
        bucket.try_acquire()
        time.sleep(0.1)
    print(prometheus_client.generate_latest().decode())
