"""The load balancer's parts, each with a named interface (no I/O here).

``LoadBalancerCore`` (``distlb._balancer``) composes them with ``execute``'s flow, which
lives there:

* ``view.PoolView``: the registry, connection counts and statistics as this process last
  saw them (every reply is applied to it), the backends strategies select from, and when
  a snapshot read is due.
* ``breakers.PoolBreakers``: one circuit breaker per backend, the ones known to refuse
  calls now, and the probes a recovering backend is due.
* ``leases.LeaseBook``: the leases this process holds (renewed), the ghosts it must give
  back, the releases it deferred; what each pool.lua call carries besides its own op.
* ``registry.Registry``: add, change (compare-and-set on the stored record), remove a
  backend; ``BackendExists``, ``UnknownBackend``.
* ``stats``: ``BackendStats``, ``Statistics`` and ``summarize`` (the report from the view).
* ``health.HealthRound``: the elected checker's round (probe, publish changes).
"""
