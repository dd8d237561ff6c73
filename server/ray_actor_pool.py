"""Keeps Flower's Ray simulation going after a client actor process dies.

In Flower 1.42 a message whose Ray actor died becomes an error reply (the strategy records
the client as failed), but the simulation's `BasicActorPool` then puts the dead actor back
into its pool, so every later message routed to it fails too and the run cannot recover.
`replace_dead_actors` makes the pool put a fresh actor in the dead one's place: the message
the dead actor held still fails, and the retry and the later rounds run normally.
"""

from __future__ import annotations

from logging import WARNING

from flwr.common.logger import log

_PATCHED = "_multifcl_replaces_dead_actors"


def replace_dead_actors() -> bool:
    """Patch the simulation actor pool (once per process); False where there is none."""
    try:
        from flwr.simulation.ray_transport.ray_actor import BasicActorPool
        from ray.exceptions import ActorDiedError
    except ImportError:  # no simulation extra installed: nothing to repair
        return False
    if getattr(BasicActorPool, _PATCHED, False):
        return True
    fetch = BasicActorPool.fetch_result_and_return_actor_to_pool

    def fetch_or_replace(pool, future):
        try:
            return fetch(pool, future)
        except ActorDiedError:
            # After an error the backend puts the future's actor back into the pool:
            # make that a live actor with the same resources.
            pool._future_to_actor[future] = pool.create_actor_fn()
            log(WARNING, "a Ray client actor died; a new one takes its place in the pool")
            raise

    BasicActorPool.fetch_result_and_return_actor_to_pool = fetch_or_replace
    setattr(BasicActorPool, _PATCHED, True)
    return True
