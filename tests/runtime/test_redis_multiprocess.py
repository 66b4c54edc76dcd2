"""A cluster of real OS processes on a real Redis: two nodes serve one function, the test
process is a third node that serves nothing (a pure client) and invokes, stops and waits.

Each node is ``python -m tests.runtime.cluster_node`` (one on uvloop, one on the plain
asyncio loop); it journals every attempt's start and end and its hooks to a file of its
own, which is how these tests count executions across processes. The nodes are
SIGKILLed, SIGSTOPped and SIGCONTed as a crash or a partition would do to them, and
Redis itself is restarted; whatever happens, every process a test started is killed
before it ends.

The client's own loop is not what these tests exercise (the nodes are), so each runs
on the asyncio loop only, not twice; the nodes cover both loops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import pathlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

import pytest

from runtime import Runtime, TaskRecord, TaskState
from runtime.errors import WaitTimeoutError
from runtime.stores.redis.store import RedisStore
from tests.redis_server import RedisServer

pytestmark = [
    pytest.mark.redis,
    pytest.mark.cluster,
    pytest.mark.asyncio(loop_factories=["asyncio"]),
]

ROOT = pathlib.Path(__file__).resolve().parents[2]
S = TaskState
LEASE = 1.0  # seconds: short, so a lost node is noticed fast, and well above MIN_LEASE
POLL = 0.02  # seconds between looks at a node's journal or output


# --- the nodes -------------------------------------------------------------------------------


class Node:
    """One ``cluster_node`` process and what it wrote."""

    def __init__(self, url: str, node_id: str, directory: pathlib.Path, loop: str) -> None:
        self.node_id = node_id
        self.journal_path = directory / f"{node_id}.log"
        self.out_path = directory / f"{node_id}.out"
        self.err_path = directory / f"{node_id}.err"
        self.journal_path.touch()
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.runtime.cluster_node", url, node_id,
                 str(directory), loop],
                cwd=ROOT, stdin=subprocess.PIPE, stdout=out, stderr=err,
            )  # fmt: skip

    def output(self) -> str:
        return self.out_path.read_text()

    def log(self) -> str:
        """What the node logged (stint's warnings and errors), for checks and for failures."""
        return self.err_path.read_text()

    def lines(self, offset: int = 0) -> list[list[str]]:
        """The journal, split into words, from byte ``offset`` on."""
        with self.journal_path.open("rb") as journal:
            journal.seek(offset)
            return [line.split() for line in journal.read().decode().splitlines()]

    def size(self) -> int:
        return self.journal_path.stat().st_size

    def started(self) -> list[str]:
        """The task of every attempt that began here, in order."""
        return [words[1] for words in self.lines() if words[0] == "start"]

    def running(self) -> set[str]:
        """Tasks whose latest attempt here began and has not ended."""
        open_: set[str] = set()
        for words in self.lines():
            if words[0] == "start":
                open_.add(words[1])
            elif words[0] == "end":
                open_.discard(words[1])
        return open_

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stopped(self) -> bool:
        """True once the process is stopped by a signal (a SIGSTOP has taken effect)."""
        stat = pathlib.Path(f"/proc/{self.process.pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] == "T"

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL (a stopped process too) and reap."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        assert self.process.stdin is not None
        self.process.stdin.close()


async def until(predicate: Callable[[], Any], timeout: float, what: str = "") -> None:
    """Look every POLL s until ``predicate()`` holds (journals are files: a cheap look)."""
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(POLL)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


@contextlib.contextmanager
def nodes_of(url: str, directory: pathlib.Path, *ids: str) -> Iterator[list[Node]]:
    """Start one node per id (alternately on uvloop and asyncio); kill them all at the end,
    whatever happened (a paused one included)."""
    started: list[Node] = []
    try:
        for i, node_id in enumerate(ids):
            started.append(Node(url, node_id, directory, ("uvloop", "asyncio")[i % 2]))
        yield started
    finally:
        for node in started:
            node.kill()


@contextlib.asynccontextmanager
async def open_cluster(
    url: str, directory: pathlib.Path, *ids: str
) -> AsyncIterator[tuple[Runtime, list[Node]]]:
    """Nodes ``ids`` serving ``work``, ready, and a client runtime (this process) that serves
    nothing; on exit the client closes and the nodes are killed."""
    with nodes_of(url, directory, *ids) as nodes:
        for node in nodes:
            await until(
                lambda n=node: f"ready {n.node_id}" in n.output() or not n.alive(),
                30,
                f"node {node.node_id} starts",
            )
            assert node.alive(), f"node {node.node_id} did not start:\n{node.log()}"
        async with Runtime(store=url, node_id="client", close_timeout=2.0) as client:
            yield client, nodes


async def all_records(rt: Runtime) -> dict[str, TaskRecord]:
    records: dict[str, TaskRecord] = {}
    cursor = None
    while True:
        page = await rt.list("work", limit=1000, cursor=cursor)
        records.update((r.task_id, r) for r in page)
        cursor = page.next_cursor
        if cursor is None:
            return records


async def invoke(rt: Runtime, ids: Iterable[str], payload: dict[str, Any]) -> list[str]:
    return list(await asyncio.gather(*(rt.invoke("work", payload, task_id=t) for t in ids)))


async def join(client: Runtime, nodes: list[Node], timeout: float) -> None:
    """``client.join``; if it times out, say what is left and what the nodes logged."""
    try:
        await client.join("work", timeout=timeout)
    except WaitTimeoutError:
        left = [r for r in (await all_records(client)).values() if not r.is_terminal]
        owners = await owned_by(client, [r.task_id for r in left[:20]], None)
        logs = "\n".join(f"--- {n.node_id}\n{n.log()[-3000:]}" for n in nodes)
        raise AssertionError(f"{len(left)} unfinished: {owners}\n{logs}") from None


def runs(nodes: Iterable[Node]) -> collections.Counter[str]:
    """How many attempts of each task began, on all nodes."""
    return collections.Counter(t for node in nodes for t in node.started())


def succeeded_events(record: TaskRecord) -> int:
    return sum(1 for event in record.events if event.status is S.SUCCEEDED)


def cluster_url(base: str) -> str:
    return f"{base}&lease={LEASE:g}"


# --- the tests ---------------------------------------------------------------------------------


async def test_two_nodes_share_5000_tasks(redis_url: str, tmp_path: pathlib.Path) -> None:
    async with open_cluster(cluster_url(redis_url), tmp_path, "a", "b") as (client, nodes):
        ids = [f"t{i:04d}" for i in range(5000)]
        for chunk in range(0, 5000, 1000):
            await invoke(client, ids[chunk : chunk + 1000], {"sleep": 0.001})
        await client.join("work", timeout=45)
        records = await all_records(client)
    assert sorted(records) == ids
    assert {r.status for r in records.values()} == {S.SUCCEEDED}
    by_node = collections.Counter(r.result for r in records.values())
    assert set(by_node) == {"a", "b"}, by_node  # each record names the node that ran it
    assert runs(nodes) == collections.Counter(ids)  # each ran exactly once


async def test_a_node_killed_with_tasks_in_flight_loses_none(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    async with open_cluster(cluster_url(redis_url), tmp_path, "a", "b") as (client, nodes):
        a = nodes[0]
        ids = [f"k{i:03d}" for i in range(400)]
        await invoke(client, ids, {"sleep": 0.05})
        await until(lambda: len(a.running()) >= 10 and len(a.started()) >= 40, 20, "a runs")
        a.kill()
        at_kill = await all_records(client)  # a writes nothing more: this is what it left
        succeeded = {t for t, r in at_kill.items() if r.status is S.SUCCEEDED}
        in_flight = set(a.started()) - succeeded  # held by a, its outcome not in Redis
        assert in_flight and succeeded  # killed mid-run, with work under way
        await client.join("work", timeout=10 * LEASE + 10)
        records = await all_records(client)
    assert sorted(records) == ids and {r.status for r in records.values()} == {S.SUCCEEDED}
    count = runs(nodes)
    assert all(count[t] == 1 for t in succeeded)  # nothing that had Succeeded ran again
    again = {t for t, n in count.items() if n > 1}
    assert again <= in_flight  # only what was under way on a ran twice, and only once more
    assert all(count[t] == 2 for t in again)
    assert all(records[t].result == "b" for t in again)
    assert all(succeeded_events(r) == 1 for r in records.values())


async def test_a_stop_from_the_client_restarts_the_instance_on_its_node(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    async with open_cluster(cluster_url(redis_url), tmp_path, "a", "b") as (client, nodes):
        await invoke(client, ["blocker"], {"block": True})
        await until(lambda: any("blocker" in n.started() for n in nodes), 10, "blocker runs")
        [owner] = [n for n in nodes if "blocker" in n.started()]
        [other] = [n for n in nodes if n is not owner]
        async with asyncio.timeout(10):  # it hung here: the node's Stopped was dropped
            stopped = await client.stop("blocker")
        assert stopped.status is S.STOPPED
        assert (await client.get("blocker")).status is S.STOPPED
        # the owner ran PreStop on the blocker's instance, then started a replacement
        await until(
            lambda: [w[0] for w in owner.lines()][-2:] == ["prestop", "init"], 10, "restart"
        )
    journal = owner.lines()
    [initial] = [w[1] for w in journal if w[0] == "init"][:1]
    assert ["prestop", initial] in journal  # PreStop ran on the instance the task ran on
    assert not [w for w in other.lines() if w[0] == "prestop"]
    assert [e.status for e in stopped.events][-2:] == [S.STOPPING, S.STOPPED]


async def test_attempts_lasting_three_leases_run_once(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    async with open_cluster(cluster_url(redis_url), tmp_path, "a", "b") as (client, nodes):
        ids = [f"long{i}" for i in range(10)]
        await invoke(client, ids, {"sleep": 3 * LEASE})
        await client.join("work", timeout=3 * LEASE + 15)
        records = await all_records(client)
        logs = [n.log() for n in nodes]
    assert {r.status for r in records.values()} == {S.SUCCEEDED}
    assert runs(nodes) == collections.Counter(ids)  # no duplicate: nobody was reclaimed
    assert all(succeeded_events(r) == 1 and r.attempts == 1 for r in records.values())
    assert not any("lost its lease" in log or "refused" in log for log in logs), logs


async def test_a_paused_node_is_reclaimed_and_its_late_writes_are_fenced(
    redis_url: str, tmp_path: pathlib.Path
) -> None:
    async with open_cluster(cluster_url(redis_url), tmp_path, "a", "b") as (client, nodes):
        a, b = nodes
        ids = [f"p{i:02d}" for i in range(60)]
        await invoke(client, ids, {"sleep": 0.5})
        await until(lambda: len(a.running()) >= 5, 10, "a runs")
        a.signal(signal.SIGSTOP)
        await until(a.stopped, 5, "a is stopped")
        running = a.running()  # a's journal cannot change while it is stopped
        held = await owned_by(client, ids, "a")  # claimed by a: running, or about to
        assert running <= held
        # b (or the client) reclaims them once a's lease lapses, and b runs them again
        await until(lambda: held <= set(b.started()), 3 * LEASE + 10, "reclaimed")
        for task_id in held:
            assert (await client.wait(task_id, timeout=10)).result == "b"
        a.signal(signal.SIGCONT)
        # a wakes, its attempts end and its writes of their outcome are refused
        await until(lambda: all(f"task {t} is no longer" in a.log() for t in running), 10, "fence")
        await client.join("work", timeout=20)
        records = await all_records(client)
        assert a.alive()
    assert {r.status for r in records.values()} == {S.SUCCEEDED}
    assert {t for t, n in runs(nodes).items() if n > 1} <= held, (held, a.lines(), a.log())
    for task_id in held:
        record = records[task_id]
        assert succeeded_events(record) == 1 and record.result == "b"  # finished once, by b
    assert "lost its lease" in a.log()


async def owned_by(rt: Runtime, ids: Iterable[str], node_id: str | None) -> Any:
    """The tasks Redis says ``node_id`` holds (the record names no owner: the store does);
    with None, every task's (status, owner, epoch)."""
    store = rt.store
    assert isinstance(store, RedisStore)
    found = [s for s in await asyncio.gather(*(store.stored(t) for t in ids)) if s is not None]
    if node_id is None:
        return {s.task_id: (s.status, s.owner, s.epoch) for s in found}
    return {s.task_id for s in found if s.owner == node_id}


async def test_nodes_ride_out_a_redis_restart(
    make_redis_server: Callable[[], RedisServer], tmp_path: pathlib.Path
) -> None:
    server = make_redis_server()
    url = cluster_url(f"{server.url}?prefix=mp")
    async with open_cluster(url, tmp_path, "a", "b") as (client, nodes):
        before = [f"r{i:03d}" for i in range(300)]
        await invoke(client, before, {"sleep": 0.02})
        await until(lambda: sum(len(n.started()) for n in nodes) >= 60, 20, "work under way")
        await asyncio.get_running_loop().run_in_executor(None, server.restart)
        after = [f"s{i:03d}" for i in range(100)]
        await invoke(client, after, {"sleep": 0.02})  # accepted once Redis is back
        await join(client, nodes, timeout=30)
        records = await all_records(client)
        assert all(n.alive() for n in nodes)
        logs = [n.log() for n in nodes]
    assert sorted(records) == sorted(before + after)
    assert {r.status for r in records.values()} == {S.SUCCEEDED}
    assert set(runs(nodes)) == set(before + after)
    assert all("reconnected to Redis" in log for log in logs), logs
