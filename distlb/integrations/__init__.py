"""Glue for the programs distlb lives in: HTTP clients and web servers.

Each module needs its own optional dependency and is imported on its own:

* ``distlb.integrations.httpx``: ``LoadBalancedTransport`` and
  ``AsyncLoadBalancedTransport`` (``pip install 'distlb[httpx]'``).
* ``distlb.integrations.requests``: ``LoadBalancedAdapter`` (``distlb[requests]``).
* ``distlb.integrations.asgi``: ``RateLimitMiddleware`` for any ASGI app
  (Starlette, FastAPI, ...); no extra dependency.
* ``distlb.integrations.wsgi``: ``RateLimitMiddleware`` for any WSGI app
  (Flask, Django, ...); no extra dependency.

They use only distlb's public API.
"""
