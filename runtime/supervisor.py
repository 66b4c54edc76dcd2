"""The supervisor actor: parent of every pool and task actor, and the lifecycle clock."""

from __future__ import annotations

from typing import Any

from actors import Actor, ActorRef, Directive, SupervisorStrategy, TimerHandle

from .messages import AddFunction, Drain, Go, PoolRetired, RemoveFunction, Sweep, Tick

_SWEEP = Sweep()
_GO = Go()


def _resume(_: BaseException) -> Directive:
    # A runtime actor that raises has hit a bug in stint (user code never runs in
    # a receive). Restarting a pool would lose its queue and instances, so the
    # failure is recorded loudly (ActorSystem.failures, the log) and the actor
    # carries on with its next message.
    return Directive.RESUME


class SupervisorActor(Actor):
    """Owns one :class:`~runtime.pool.InstancePoolActor` per function; ticks them all.

    Each tick tells every pool to sweep: enforce attempt timeouts, freeze idle
    instances, destroy those idle past ``idle_timeout``, keep ``min_instances``.
    One timer for the whole runtime, however many tasks and instances there are.
    """

    supervisor_strategy = SupervisorStrategy(_resume)

    def __init__(self, tick_interval: float) -> None:
        self.tick_interval = tick_interval
        self.pools: dict[str, ActorRef] = {}
        self.retiring: list[ActorRef] = []  # unregistered pools finishing their work
        self.timer: TimerHandle | None = None

    def on_start(self) -> None:
        self.timer = self.schedule(self.tick_interval, Tick())

    def on_stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

    def receive(self, message: Any) -> Any:
        if isinstance(message, Tick):
            self._tick()
        elif isinstance(message, AddFunction):
            pool = message.entry.pool
            self.pools[message.spec.name] = pool
        elif isinstance(message, RemoveFunction):
            pool = self.pools.pop(message.name, None)
            if pool is not None:
                pool.tell(Drain(unregister=True))
                self.retiring.append(pool)
        elif isinstance(message, PoolRetired):
            # No more Sweeps for it; Go follows whatever was sent to it before.
            self.retiring = [pool for pool in self.retiring if pool is not message.pool]
            message.pool.tell(_GO)
        else:
            raise TypeError(f"the supervisor does not handle {type(message).__name__}")

    def all_pools(self) -> list[ActorRef]:
        return [*self.pools.values(), *self.retiring]

    def _tick(self) -> None:
        self.retiring = [pool for pool in self.retiring if pool.is_alive]
        for pool in self.all_pools():
            pool.tell(_SWEEP)
        self.timer = self.schedule(self.tick_interval, Tick())
