"""The sans-I/O core: each primitive plans script calls and parses replies.

Nothing here touches a socket or sleeps. An *operation* is a generator that
yields :class:`Call` (run this script, send me the reply) and :class:`Sleep`
(wait this long) steps and finally returns a result. ``distlb._runtime`` drives
operations for the sync classes and for ``distlb.aio``: the two shells differ
only in ``run(call)`` versus ``await run(call)``.
"""
