"""The load balancer's parts, each with a named interface (no I/O here).

``LoadBalancerCore`` (``distlb._balancer``) composes them: the registry operations and
``execute``'s flow live there; this package holds the state it keeps between calls.

* ``view.PoolView``: the registry, connection counts and statistics as this process last
  saw them (every reply is applied to it), the backends strategies select from, and when
  a snapshot read is due.
* ``breakers.PoolBreakers``: one circuit breaker per backend, the ones known to refuse
  calls now, and the probes a recovering backend is due.
* ``leases.LeaseBook``: the leases this process holds (renewed), the ghosts it must give
  back, the releases it deferred; what each pool.lua call carries besides its own op.
"""
