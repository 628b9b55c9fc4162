"""Prefetch of referenced records with LOAD answers (spec: wire-protocol.md, "Prefetch")."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dhruva import wire
from dhruva.client_storage import ClientStorage
from dhruva.error import ReadConflictError
from dhruva.server.storage_server import StorageServer
from dhruva.utils import ROOT_OID

Serve = Callable[..., StorageServer]


class Counting(ClientStorage):
    """A ClientStorage that counts LOAD requests and the answers' kinds."""

    loads = 0
    prefetch_answers = 0
    _asked_load = False

    # What went out and came back, at the socket's edge: load() writes its
    # LOAD frame without _request.
    def _send(self, data: bytes) -> None:
        payloads = wire.FrameDecoder().feed(data)
        self._asked_load = isinstance(wire.decode_message(payloads[-1]), wire.Load)
        super()._send(data)

    def _receive(self) -> wire.Message:
        reply = super()._receive()
        if self._asked_load:
            self._asked_load = False
            self.loads += 1
            if isinstance(reply, wire.RecordPrefetch):
                self.prefetch_answers += 1
        return reply


def make_tree(client: ClientStorage, count: int, fanout: int = 4) -> list[bytes]:
    """Commit ``count`` records, oid i referencing oids fanout*i+1 .. fanout*i+fanout."""
    oids = [client.new_oid() for _ in range(count)]
    assert oids[0] == ROOT_OID
    client.begin()
    for index, oid in enumerate(oids):
        children = oids[fanout * index + 1 : fanout * index + fanout + 1]
        client.store(oid, b"node %d" % index, b"".join(children))
    client.end()
    return oids


@pytest.mark.req("WIRE-055", "WIRE-056")
def test_prefetch_spares_round_trips_and_returns_current_records(serve: Serve) -> None:
    server = serve()
    writer = ClientStorage(server.address)
    oids = make_tree(writer, 200)
    reader = Counting(server.address)
    records = [reader.load(oid) for oid in oids]
    assert [r.data for r in records] == [b"node %d" % i for i in range(200)]
    assert [r.refs for r in records] == [writer.load(oid).refs for oid in oids]
    assert reader.prefetch_answers >= 1
    assert reader.loads < 200 // 4
    writer.close()
    reader.close()


@pytest.mark.req("WIRE-055")
def test_client_without_the_feature_gets_plain_records(serve: Serve) -> None:
    server = serve()
    writer = ClientStorage(server.address)
    oids = make_tree(writer, 50)
    reader = Counting(server.address, prefetch=False)
    for oid in oids:
        reader.load(oid)
    assert reader.loads == 50
    assert reader.prefetch_answers == 0
    writer.close()
    reader.close()


@pytest.mark.req("WIRE-056")
def test_invalidated_oid_is_never_prefetched(serve: Serve) -> None:
    server = serve()
    writer = ClientStorage(server.address)
    root, child = make_tree(writer, 2)
    # Without snapshots, so that the invalidated oid is a read conflict.
    reader = Counting(server.address, snapshots=False)
    reader.sync()
    writer.begin()
    writer.store(child, b"changed", b"")
    writer.end()
    # The child changed after the reader's last sync: loading the root must
    # not bring the old child along, and loading the child is a read conflict.
    reader.load(root)
    assert reader.prefetch_answers == 0
    with pytest.raises(ReadConflictError):
        reader.load(child)
    reader.sync()
    assert reader.load(child).data == b"changed"
    writer.close()
    reader.close()


@pytest.mark.req("WIRE-057")
def test_prefetched_records_are_dropped_at_every_sync(serve: Serve) -> None:
    server = serve()
    writer = ClientStorage(server.address)
    root, child = make_tree(writer, 2)
    reader = Counting(server.address)
    reader.sync()
    reader.load(root)
    assert reader.prefetch_answers == 1
    writer.begin()
    writer.store(child, b"changed", b"")
    writer.end()
    # Until the reader synchronizes it sees the child as of its last sync
    # (what a LOAD right after the prefetch returned), with no round trip.
    assert reader.load(child).data == b"node 1"
    assert reader.loads == 1
    reader.sync()
    assert reader.load(child).data == b"changed"
    assert reader.loads == 2
    # A commit synchronizes too.
    reader.load(root)
    reader.begin()
    reader.store(root, b"root", child)
    reader.end()
    loads = reader.loads
    reader.load(child)
    assert reader.loads == loads + 1
    writer.close()
    reader.close()


def test_prefetch_bounds(serve: Serve) -> None:
    server = serve(prefetch_records=3)
    writer = ClientStorage(server.address)
    oids = make_tree(writer, 40, fanout=8)
    reader = ClientStorage(server.address)
    captured: list[wire.Message] = []
    original = reader._receive

    def spy() -> wire.Message:
        reply = original()
        captured.append(reply)
        return reply

    reader._receive = spy  # type: ignore[method-assign]
    for oid in oids:
        reader.load(oid)
    sizes = [len(m.prefetched) for m in captured if isinstance(m, wire.RecordPrefetch)]
    assert sizes and max(sizes) <= 3
    off = serve(prefetch_records=0)
    writer2 = ClientStorage(off.address)
    oids = make_tree(writer2, 10)
    reader2 = Counting(off.address)
    for oid in oids:
        reader2.load(oid)
    assert reader2.prefetch_answers == 0 and reader2.loads == 10
    for storage in (writer, reader, writer2, reader2):
        storage.close()


def test_record_prefetch_round_trip() -> None:
    from dhruva.storage import Record
    from dhruva.utils import int8_to_str

    message = wire.RecordPrefetch(
        Record(int8_to_str(0), b"v1", int8_to_str(1)),
        [Record(int8_to_str(1), b"one", b"")],
    )
    encoded = message.encode()
    assert wire.decode_message(encoded[4:]) == message
    with pytest.raises(wire.ProtocolError):
        wire.decode_message(encoded[4:-1])


@pytest.mark.req("WIRE-056")
def test_read_ahead_in_oid_order_and_not_at_random(serve: Serve) -> None:
    import random

    server = serve()
    writer = ClientStorage(server.address)
    oids = [writer.new_oid() for _ in range(400)]
    writer.begin()
    for index, oid in enumerate(oids):
        writer.store(oid, b"flat %d" % index, b"")
    writer.end()
    in_order = Counting(server.address)
    assert [in_order.load(oid).data for oid in oids] == [b"flat %d" % i for i in range(400)]
    assert in_order.loads < 400 // 8
    shuffled = list(oids)
    random.Random(7).shuffle(shuffled)
    at_random = Counting(server.address)
    for oid in shuffled:
        assert at_random.load(oid).data == b"flat %d" % oids.index(oid)
    # Read-ahead starts only when the next oid in order is asked for.
    assert at_random.loads > 400 * 3 // 4
    for client in (writer, in_order, at_random):
        client.close()


@pytest.mark.req("WIRE-056")
def test_read_ahead_skips_invalidated_oids(serve: Serve) -> None:
    server = serve()
    writer = ClientStorage(server.address)
    oids = [writer.new_oid() for _ in range(20)]
    writer.begin()
    for index, oid in enumerate(oids):
        writer.store(oid, b"flat %d" % index, b"")
    writer.end()
    # Without snapshots, so that the invalidated oid is a read conflict.
    reader = Counting(server.address, snapshots=False)
    reader.sync()
    writer.begin()
    writer.store(oids[5], b"changed", b"")
    writer.end()
    for oid in oids[:5]:
        reader.load(oid)
    with pytest.raises(ReadConflictError):
        reader.load(oids[5])
    for oid in oids[6:]:
        assert reader.load(oid).data == b"flat %d" % oids.index(oid)
    writer.close()
    reader.close()


@pytest.mark.req("WIRE-056", "WIRE-105")
def test_prefetched_records_are_the_snapshots_versions(serve: Serve) -> None:
    server = serve()
    writer = ClientStorage(server.address)
    root, child, other = make_tree(writer, 3, fanout=2)
    reader = Counting(server.address)
    reader.sync()
    # The root's answer brings both children, as of the reader's snapshot.
    assert reader.load(root).data == b"node 0"
    assert reader.prefetch_answers == 1
    loads = reader.loads
    writer.begin()
    writer.store(child, b"changed", b"")
    writer.end()
    # The prefetched child is the version the snapshot saw, as a LOAD would
    # return it now (load_at), and the other child is unchanged.
    assert reader.load(child).data == b"node 1"
    assert reader.load(other).data == b"node 2"
    assert reader.loads == loads
    fresh = Counting(server.address, prefetch=False)
    fresh.sync()
    writer.begin()
    writer.store(child, b"changed again", b"")
    writer.end()
    assert fresh.load(child).data == b"changed"
    # At the next sync the prefetched records go, and the new state comes.
    reader.sync()
    assert reader.load(child).data == b"changed again"
    writer.close()
    reader.close()
    fresh.close()


@pytest.mark.req("WIRE-055", "WIRE-056")
def test_random_reads_among_known_references_keep_the_window_small() -> None:
    import random

    from dhruva.server.prefetch import Prefetcher, PrefetchState
    from dhruva.storage import MemoryStorage

    storage = MemoryStorage()
    oids = [storage.new_oid() for _ in range(20_001)]
    storage.begin()
    # The root references 20,000 leaves (more than the frontier holds):
    # every leaf the client asks for is a known reference, or was dropped.
    storage.store(oids[0], b"mapping", b"".join(oids[1:]))
    for index, oid in enumerate(oids[1:]):
        storage.store(oid, b"leaf %d" % index, b"")
    storage.end()
    prefetcher = Prefetcher(storage, max_records=32, max_bytes=1 << 20)
    at_random = PrefetchState()
    prefetcher.choose(at_random, set(), storage.load(oids[0]))
    leaves = oids[1:]
    random.Random(3).shuffle(leaves)
    sent = [len(prefetcher.choose(at_random, set(), storage.load(oid))) for oid in leaves[:500]]
    # Random picks were not predicted: the window stays at its minimum
    # (it used to double on every leaf, each one a referenced oid).
    assert sum(sent[50:]) <= 450 * 2, sum(sent[50:])
    # A client taking the leaves in the frontier's order gets more and more.
    in_order = PrefetchState()
    prefetcher.choose(in_order, set(), storage.load(oids[0]))
    walked = []
    position = 1
    while position < 2000:
        walked.append(len(prefetcher.choose(in_order, set(), storage.load(oids[position]))))
        position += walked[-1] + 1
    assert max(walked) == 32, walked
