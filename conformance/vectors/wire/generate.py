"""Write the wire-protocol transcripts in this folder (spec: ``spec/wire-protocol.md``).

Run ``python conformance/vectors/wire/generate.py`` after a change to the
protocol, and ``--check`` to see whether the JSON files are what it makes
(exit status 1 when one is stale).  The JSON files are the vectors; what
every field means, what a replayer compares and what it ignores, and how the
authentication transcripts are replayed against a server whose nonces are
fresh, is in ``conformance/vectors/README.md``.  The replayer is
``conformance/test_wire_transcripts.py``.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

from dhruva import wire
from dhruva.server import security
from dhruva.storage import Record
from dhruva.utils import int8_to_str

HERE = Path(__file__).parent
T = wire.MessageType
E = wire.ErrorCode


def hello(major: int = wire.PROTOCOL_MAJOR, magic: bytes = wire.MAGIC) -> bytes:
    return wire.Hello(major, 0, "", magic).encode()


HELLO_OK = wire.HelloOk(features="", storage_capabilities="").encode()


def send(data: bytes, client: str = "a") -> dict[str, Any]:
    return {"client": client, "send": data.hex()}


def expect(data: bytes, client: str = "a") -> dict[str, Any]:
    return {"client": client, "expect": data.hex()}


def closed(client: str = "a") -> dict[str, Any]:
    return {"client": client, "expect_close": True}


def error(code: E, oids: list[bytes] | None = None) -> bytes:
    return wire.Error(code, "", oids or []).encode()


def greet(client: str = "a") -> list[dict[str, Any]]:
    return [send(hello(), client), expect(HELLO_OK, client)]


OID0, OID1 = int8_to_str(0), int8_to_str(1)
AUTH_SECRET = b"dhruva test secret"
SERVER_NONCE = bytes(range(32))
CLIENT_NONCE = bytes(range(32, 64))
AUTH_SERVER = {"secret": AUTH_SECRET.hex(), "server_nonces": [SERVER_NONCE.hex()]}
CHALLENGE = wire.AuthChallenge(security.AUTH_MECHANISM, SERVER_NONCE).encode()
GOOD_AUTH = wire.Auth(
    security.AUTH_MECHANISM,
    CLIENT_NONCE,
    security.client_proof(AUTH_SECRET, SERVER_NONCE, CLIENT_NONCE),
).encode()
AUTH_OK = wire.AuthOk(security.server_proof(AUTH_SECRET, SERVER_NONCE, CLIENT_NONCE)).encode()
MISSING = b"\xff" * 8
NEVER = int8_to_str(0x7FFF_FFFF_FFFF_FFFF)
SYNC = wire.Empty(T.SYNC).encode()
EMPTY_OIDS = wire.Oids([]).encode()
COMMITTED_NONE = wire.Committed([]).encode()
SNAPSHOT_HELLO = wire.Hello(features=wire.FEATURE_SNAPSHOTS).encode()
BLOB_HELLO = wire.Hello(features=wire.FEATURE_BLOBS).encode()
BLOB_SNAPSHOT_HELLO = wire.Hello(
    features=f"{wire.FEATURE_BLOBS} {wire.FEATURE_SNAPSHOTS}"
).encode()
BLOB_TIDS_HELLO = wire.Hello(features=f"{wire.FEATURE_BLOBS} {wire.FEATURE_BLOB_TIDS}").encode()


def blob_transcripts() -> dict[str, dict[str, Any]]:
    """The transcripts of the feature ``blobs`` (wire protocol, "Blobs")."""
    root = Record(OID0, b"v1", b"")
    current = wire.SESSION_SNAPSHOT
    return {
        "blobs": {
            "description": (
                "a blob session (feature 'blobs', WIRE-130): BLOB_CHUNK frames have no answer"
                " and make the blob of the next COMMIT (WIRE-132, SRV-120, SRV-122); READ_BLOB"
                " at the session's snapshot answers BLOB_DATA, fewer bytes than asked at the"
                " end (WIRE-133, WIRE-134), NO_SUCH_OBJECT for an oid without a blob"
            ),
            "fresh": True,
            "steps": [
                send(BLOB_HELLO),
                expect(HELLO_OK),
                send(
                    wire.BlobChunk(OID0, b"he").encode()
                    + wire.BlobChunk(OID0, b"llo").encode()
                    + wire.Commit([root]).encode()
                ),
                expect(COMMITTED_NONE),
                send(wire.ReadBlob(OID0, current, 0, wire.MAX_BLOB_CHUNK).encode()),
                expect(wire.BlobData(b"hello").encode()),
                send(wire.ReadBlob(OID0, current, 3, 10).encode()),
                expect(wire.BlobData(b"lo").encode()),
                send(wire.ReadBlob(OID0, current, 5, 1).encode()),
                expect(wire.BlobData(b"").encode()),
                send(wire.ReadBlob(OID1, current, 0, 1).encode()),
                expect(error(E.NO_SUCH_OBJECT, [OID1])),
            ],
        },
        "blob-requests-need-the-feature": {
            "description": (
                "BLOB_CHUNK from a session that did not negotiate 'blobs' is UNKNOWN_MESSAGE,"
                " then closed (WIRE-130)"
            ),
            "steps": [
                *greet(),
                send(wire.BlobChunk(OID0, b"x").encode()),
                expect(error(E.UNKNOWN_MESSAGE)),
                closed(),
            ],
        },
        "blob-without-its-record": {
            "description": (
                "a COMMIT whose transaction sent a blob of an oid it does not store is"
                " MALFORMED, then closed, nothing written (WIRE-135)"
            ),
            "steps": [
                send(BLOB_HELLO),
                expect(HELLO_OK),
                send(wire.BlobChunk(OID1, b"orphan").encode() + wire.Commit([root]).encode()),
                expect(error(E.MALFORMED)),
                closed(),
            ],
        },
        "malformed-read-blob-length": {
            "description": "a READ_BLOB of length 0 is malformed, then closed (WIRE-131)",
            "steps": [
                send(BLOB_HELLO),
                expect(HELLO_OK),
                send(wire.ReadBlob(OID0, current, 0, 0).encode()),
                expect(error(E.MALFORMED)),
                closed(),
            ],
        },
        "blob-tids": {
            "description": (
                "outside snapshots, with the feature 'blob-tids', a READ_BLOB at SESSION_SNAPSHOT"
                " is answered with BLOB_DATA_AT naming the latest commit (WIRE-137); after"
                " another client commits a new blob for the oid, a READ_BLOB naming that tid"
                " still reads the first version, with BLOB_DATA (SRV-124), and a new read at"
                " SESSION_SNAPSHOT names the new commit; a client without the feature gets"
                " BLOB_DATA as before (WIRE-133)"
            ),
            "fresh": True,
            "steps": [
                send(BLOB_TIDS_HELLO),
                expect(HELLO_OK),
                send(wire.BlobChunk(OID0, b"hello").encode() + wire.Commit([root]).encode()),
                expect(COMMITTED_NONE),
                send(wire.ReadBlob(OID0, current, 0, 2).encode()),
                expect(wire.BlobDataAt(1, b"he").encode()),
                send(BLOB_HELLO, "b"),
                expect(HELLO_OK, "b"),
                send(
                    wire.BlobChunk(OID0, b"HELLO!").encode()
                    + wire.Commit([Record(OID0, b"v2", b"")]).encode(),
                    "b",
                ),
                expect(COMMITTED_NONE, "b"),
                send(wire.ReadBlob(OID0, 1, 2, 10).encode()),
                expect(wire.BlobData(b"llo").encode()),
                send(wire.ReadBlob(OID0, current, 0, 10).encode()),
                expect(wire.BlobDataAt(2, b"HELLO!").encode()),
                send(wire.ReadBlob(OID0, current, 6, 10).encode()),
                expect(wire.BlobDataAt(2, b"").encode()),
                send(wire.ReadBlob(OID0, current, 0, 10).encode(), "b"),
                expect(wire.BlobData(b"HELLO!").encode(), "b"),
            ],
        },
        "blob-read-above-snapshot": {
            "description": (
                "in a snapshot session a READ_BLOB at a tid above the session's snapshot is"
                " MALFORMED, then closed (WIRE-136)"
            ),
            "fresh": True,
            "steps": [
                send(BLOB_SNAPSHOT_HELLO),
                expect(HELLO_OK),
                send(SYNC),
                expect(wire.Synced(0, []).encode()),
                send(wire.ReadBlob(OID0, 1, 0, 1).encode()),
                expect(error(E.MALFORMED)),
                closed(),
            ],
        },
    }


def transcripts() -> dict[str, dict[str, Any]]:
    r0 = Record(OID0, b"v1", b"")
    r0b = Record(OID0, b"v2", OID1)
    r1 = Record(OID1, b"one", b"")
    rp0 = Record(OID0, b"v1", OID1)
    r1b = Record(OID1, b"uno", b"")
    return {
        "handshake": {
            "description": "HELLO is answered by HELLO_OK (WIRE-020)",
            "steps": greet(),
        },
        "version-mismatch": {
            "description": "an unknown major version is refused, then closed (WIRE-022)",
            "steps": [send(hello(major=2)), expect(error(E.VERSION_MISMATCH)), closed()],
        },
        "bad-magic": {
            "description": "a HELLO with the wrong magic is refused, then closed (WIRE-020)",
            "steps": [send(hello(magic=b"DURS")), expect(error(E.MALFORMED)), closed()],
        },
        "handshake-required": {
            "description": "any first message other than HELLO is refused (WIRE-021)",
            "steps": [send(SYNC), expect(error(E.HANDSHAKE_REQUIRED)), closed()],
        },
        "oversized-frame": {
            "description": "a length above the maximum is refused before the body (WIRE-012)",
            "steps": [
                *greet(),
                send(bytes.fromhex("7fffffff")),
                expect(error(E.FRAME_TOO_LARGE)),
                closed(),
            ],
        },
        "empty-frame": {
            "description": "a frame of length 0 is malformed (WIRE-012)",
            "steps": [
                *greet(),
                send(bytes.fromhex("00000000")),
                expect(error(E.MALFORMED)),
                closed(),
            ],
        },
        "unknown-message": {
            "description": "an unknown message type is refused, then closed (WIRE-013)",
            "steps": [
                *greet(),
                send(wire.frame(b"\x7e")),
                expect(error(E.UNKNOWN_MESSAGE)),
                closed(),
            ],
        },
        "truncated-load": {
            "description": "a LOAD whose oid is short is malformed (WIRE-013)",
            "steps": [
                *greet(),
                send(wire.frame(b"\x03\x00\x00\x00")),
                expect(error(E.MALFORMED)),
                closed(),
            ],
        },
        "sync-fresh-session": {
            "description": "a new session has no invalidations (WIRE-060)",
            "steps": [*greet(), send(SYNC), expect(EMPTY_OIDS)],
        },
        "load-missing": {
            "description": "LOAD of an oid that is not stored answers NO_SUCH_OBJECT (WIRE-050)",
            "steps": [
                *greet(),
                send(wire.Load(MISSING).encode()),
                expect(error(E.NO_SUCH_OBJECT, [MISSING])),
                send(SYNC),
                expect(EMPTY_OIDS),
            ],
        },
        "empty-commit": {
            "description": "a COMMIT of no records synchronizes only (WIRE-072)",
            "steps": [*greet(), send(wire.Commit([]).encode()), expect(COMMITTED_NONE)],
        },
        "unallocated-oid": {
            "description": "a commit naming an oid never allocated is refused (SRV-022)",
            "steps": [
                *greet(),
                send(wire.Commit([Record(NEVER, b"x", b"")]).encode()),
                expect(error(E.UNALLOCATED_OID, [NEVER])),
                send(wire.Load(NEVER).encode()),
                expect(error(E.NO_SUCH_OBJECT, [NEVER])),
            ],
        },
        "quit": {
            "description": "QUIT ends the session without an answer (WIRE-080)",
            "steps": [*greet(), send(wire.Empty(T.QUIT).encode()), closed()],
        },
        "new-oids-commit-load": {
            "description": "allocate, commit, load and bulk-load on an empty database",
            "fresh": True,
            "steps": [
                *greet(),
                send(wire.NewOids(2).encode()),
                expect(wire.Oids([OID0, OID1]).encode()),
                send(wire.Commit([r0, r1]).encode()),
                expect(COMMITTED_NONE),
                send(wire.Load(OID0).encode()),
                expect(wire.RecordMessage(r0).encode()),
                send(wire.BulkLoad([OID1, OID0]).encode()),
                expect(wire.Records([r1, r0]).encode()),
                send(wire.Empty(T.SIZE).encode()),
                expect(wire.SizeIs(2).encode()),
                send(wire.ListOids(OID0, 10).encode()),
                expect(wire.Oids([OID0, OID1]).encode()),
            ],
        },
        "prefetch": {
            "description": (
                "a client announcing 'prefetch' gets the referenced record with LOAD's"
                " answer; one that does not gets RECORD (WIRE-055); an oid invalidated"
                " for the session is never prefetched (WIRE-056)"
            ),
            "fresh": True,
            "steps": [
                send(wire.Hello(features="prefetch").encode()),
                expect(HELLO_OK),
                send(wire.NewOids(2).encode()),
                expect(wire.Oids([OID0, OID1]).encode()),
                send(wire.Commit([rp0, r1]).encode()),
                expect(COMMITTED_NONE),
                *greet("b"),
                send(wire.Load(OID0).encode(), "b"),
                expect(wire.RecordMessage(rp0).encode(), "b"),
                send(wire.Load(OID0).encode()),
                expect(wire.RecordPrefetch(rp0, [r1]).encode()),
                send(wire.Hello(features="prefetch").encode(), "c"),
                expect(HELLO_OK, "c"),
                send(wire.Commit([r1b]).encode(), "b"),
                expect(COMMITTED_NONE, "b"),
                send(wire.Load(OID0).encode(), "c"),
                expect(wire.RecordMessage(rp0).encode(), "c"),
            ],
        },
        "snapshots": {
            "description": (
                "a snapshot session (feature 'snapshots', WIRE-100): SYNC and COMMIT answers"
                " carry the new snapshot tid (WIRE-102, WIRE-104); a LOAD of an oid changed"
                " after the snapshot returns the version the snapshot saw, not READ_CONFLICT"
                " (WIRE-105, SRV-100), as does LOAD_AT at the snapshot (WIRE-106); a COMMIT"
                " whose READS name an oid changed since is refused with READ_CONFLICT"
                " (WIRE-108, WIRE-109, SRV-104) and commits after a SYNC; HOLD has no answer"
                " (WIRE-112)"
            ),
            "fresh": True,
            "steps": [
                send(SNAPSHOT_HELLO),
                expect(HELLO_OK),
                send(SYNC),
                expect(wire.Synced(0, []).encode()),
                send(wire.NewOids(2).encode()),
                expect(wire.Oids([OID0, OID1]).encode()),
                send(wire.Commit([r0, r1]).encode()),
                expect(wire.CommittedAt(1, []).encode()),
                send(SNAPSHOT_HELLO, "b"),
                expect(HELLO_OK, "b"),
                send(SYNC, "b"),
                expect(wire.Synced(1, []).encode(), "b"),
                send(wire.Commit([r0b]).encode()),
                expect(wire.CommittedAt(2, []).encode()),
                send(wire.Load(OID0).encode(), "b"),
                expect(wire.RecordMessage(r0).encode(), "b"),
                send(wire.LoadAt(OID0, 1).encode(), "b"),
                expect(wire.RecordMessage(r0).encode(), "b"),
                send(wire.Reads([OID0]).encode() + wire.Commit([r1b]).encode(), "b"),
                expect(error(E.READ_CONFLICT, [OID0]), "b"),
                send(wire.Hold(wire.NO_HOLD).encode() + SYNC, "b"),
                expect(wire.Synced(2, [OID0]).encode(), "b"),
                send(wire.Reads([OID0]).encode() + wire.Commit([r1b]).encode(), "b"),
                expect(wire.CommittedAt(3, []).encode(), "b"),
                send(wire.Load(OID1).encode()),
                expect(wire.RecordMessage(r1).encode()),
                send(SYNC),
                expect(wire.Synced(3, [OID1]).encode()),
            ],
        },
        "snapshot-too-old": {
            "description": (
                "LOAD_AT of a tid whose versions are not kept (a commit was made while no"
                " older snapshot was held) is answered SNAPSHOT_TOO_OLD carrying the tid and"
                " the oldest tid served (WIRE-114, SRV-102); the session goes on"
            ),
            "fresh": True,
            "steps": [
                send(SNAPSHOT_HELLO),
                expect(HELLO_OK),
                send(wire.NewOids(1).encode()),
                expect(wire.Oids([OID0]).encode()),
                send(wire.Commit([r0]).encode()),
                expect(wire.CommittedAt(1, []).encode()),
                send(wire.Commit([r0b]).encode()),
                expect(wire.CommittedAt(2, []).encode()),
                send(wire.LoadAt(OID0, 1).encode()),
                expect(wire.snapshot_too_old(1, 2).encode()),
                send(wire.Load(OID0).encode()),
                expect(wire.RecordMessage(r0b).encode()),
            ],
        },
        "snapshot-requests-need-the-feature": {
            "description": (
                "LOAD_AT (and READS, HOLD) from a session without the feature 'snapshots'"
                " is refused with UNKNOWN_MESSAGE, then closed (WIRE-101)"
            ),
            "steps": [
                *greet(),
                send(wire.LoadAt(OID0, 0).encode()),
                expect(error(E.UNKNOWN_MESSAGE)),
                closed(),
            ],
        },
        "snapshot-load-at-future": {
            "description": (
                "LOAD_AT of a tid above the session's snapshot is MALFORMED, then closed"
                " (WIRE-107)"
            ),
            "steps": [
                send(SNAPSHOT_HELLO),
                expect(HELLO_OK),
                send(wire.LoadAt(OID0, 1 << 40).encode()),
                expect(error(E.MALFORMED)),
                closed(),
            ],
        },
        "pack": {
            "description": (
                "PACK is answered OK once packed, with no PACK_PROGRESS frames before it:"
                " the client did not announce 'pack-progress' (WIRE-085)"
            ),
            "fresh": True,
            "steps": [
                *greet(),
                send(wire.Empty(T.PACK).encode()),
                expect(wire.Empty(T.OK).encode()),
            ],
        },
        "stage-then-commit": {
            "description": "STAGE frames have no answer; COMMIT commits them too (WIRE-070)",
            "fresh": True,
            "steps": [
                *greet(),
                send(wire.NewOids(2).encode()),
                expect(wire.Oids([OID0, OID1]).encode()),
                send(wire.Stage([r0]).encode() + wire.Commit([r1]).encode()),
                expect(COMMITTED_NONE),
                send(wire.Load(OID0).encode()),
                expect(wire.RecordMessage(r0).encode()),
            ],
        },
        "auth-ok": {
            "description": (
                "a server with a secret challenges HELLO; a right proof is answered by"
                " AUTH_OK with the server's proof, then requests work (WIRE-030..032)"
            ),
            "server": AUTH_SERVER,
            "steps": [
                send(hello()),
                expect(CHALLENGE),
                send(GOOD_AUTH),
                expect(AUTH_OK),
                send(SYNC),
                expect(EMPTY_OIDS),
            ],
        },
        "auth-wrong-proof": {
            "description": "a wrong proof is refused with AUTH_FAILED, then closed (WIRE-031)",
            "server": AUTH_SERVER,
            "steps": [
                send(hello()),
                expect(CHALLENGE),
                send(wire.Auth(security.AUTH_MECHANISM, CLIENT_NONCE, b"\0" * 32).encode()),
                expect(error(E.AUTH_FAILED)),
                closed(),
            ],
        },
        "auth-unknown-mechanism": {
            "description": "an AUTH naming another mechanism is refused (WIRE-031)",
            "server": AUTH_SERVER,
            "steps": [
                send(hello()),
                expect(CHALLENGE),
                send(wire.Auth("plain", CLIENT_NONCE, b"\0" * 32).encode()),
                expect(error(E.AUTH_FAILED)),
                closed(),
            ],
        },
        "auth-required": {
            "description": (
                "a request before AUTH is refused with AUTH_REQUIRED and not run, then"
                " closed (SRV-080)"
            ),
            "server": AUTH_SERVER,
            "steps": [
                send(hello()),
                expect(CHALLENGE),
                send(wire.Load(OID0).encode()),
                expect(error(E.AUTH_REQUIRED)),
                closed(),
            ],
        },
        "conflicts": {
            "description": (
                "b learns of a's commit at sync; a load or a commit of an oid changed"
                " since b's last sync is a conflict (SRV-020, SRV-107, SRV-023)"
            ),
            "fresh": True,
            "steps": [
                *greet("a"),
                *greet("b"),
                send(wire.NewOids(2).encode(), "a"),
                expect(wire.Oids([OID0, OID1]).encode(), "a"),
                send(wire.Commit([r0, r1]).encode(), "a"),
                expect(COMMITTED_NONE, "a"),
                send(SYNC, "b"),
                expect(wire.Oids([OID0, OID1]).encode(), "b"),
                send(wire.Load(OID0).encode(), "b"),
                expect(wire.RecordMessage(r0).encode(), "b"),
                send(wire.Commit([r0b]).encode(), "a"),
                expect(COMMITTED_NONE, "a"),
                send(wire.Load(OID0).encode(), "b"),
                expect(error(E.READ_CONFLICT, [OID0]), "b"),
                send(wire.Commit([Record(OID0, b"v3", b"")]).encode(), "b"),
                expect(error(E.WRITE_CONFLICT, [OID0]), "b"),
                send(wire.Commit([]).encode(), "b"),
                expect(wire.Committed([OID0]).encode(), "b"),
                send(wire.Load(OID0).encode(), "b"),
                expect(wire.RecordMessage(r0b).encode(), "b"),
                send(wire.Commit([Record(OID0, b"v3", b"")]).encode(), "b"),
                expect(COMMITTED_NONE, "b"),
                send(SYNC, "a"),
                expect(wire.Oids([OID0]).encode(), "a"),
            ],
        },
    }


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def malformed() -> dict[str, dict[str, Any]]:
    """Frames and messages a server must refuse, each with the ERROR code expected."""

    def refused(frame_bytes: bytes, code: E, handshake: bool = True) -> list[dict[str, Any]]:
        return [*(greet() if handshake else []), send(frame_bytes), expect(error(code)), closed()]

    bad_refs = OID0 + u32(1) + u32(7) + b"x" + bytes(7)
    return {
        "malformed-new-oids-zero": {
            "description": "NEW_OIDS with a count of 0 is malformed (WIRE-041)",
            "steps": refused(wire.frame(b"\x02" + u32(0)), E.MALFORMED),
        },
        "malformed-load-trailing-byte": {
            "description": "a LOAD with a byte after its oid is malformed (WIRE-013)",
            "steps": refused(wire.frame(b"\x03" + OID0 + b"\x00"), E.MALFORMED),
        },
        "malformed-refs-length": {
            "description": "a COMMIT record whose refs_length is 7 is malformed (WIRE-014)",
            "steps": refused(wire.frame(b"\x07" + u32(1) + bad_refs), E.MALFORMED),
        },
        "malformed-forged-count": {
            "description": "a BULK_LOAD claiming 2**32-1 oids, holding 1, is malformed (WIRE-013)",
            "steps": refused(wire.frame(b"\x04" + u32(0xFFFFFFFF) + OID0), E.MALFORMED),
        },
        "malformed-hello-text": {
            "description": "a HELLO whose feature text is not UTF-8 is malformed (WIRE-013)",
            "steps": refused(
                wire.frame(b"\x01" + wire.MAGIC + struct.pack(">HHH", 1, 0, 2) + b"\xff\xfe"),
                E.MALFORMED,
                handshake=False,
            ),
        },
        "response-as-request": {
            "description": "a response type (OK) sent as a request is refused (WIRE-013)",
            "steps": refused(wire.Empty(T.OK).encode(), E.UNKNOWN_MESSAGE),
        },
        "frame-above-maximum": {
            "description": "a length of 64 MiB + 1 is refused before the body (WIRE-011, WIRE-012)",
            "steps": refused(u32(wire.MAX_FRAME_SIZE + 1), E.FRAME_TOO_LARGE),
        },
        "large-frame-before-handshake": {
            "description": "before the handshake a frame above 131072 bytes is refused (WIRE-033)",
            "steps": refused(u32(wire.HANDSHAKE_MAX_FRAME_SIZE + 1), E.FRAME_TOO_LARGE, False),
        },
    }


# The requirement IDs each transcript checks (and only those).
REQUIREMENTS: dict[str, list[str]] = {
    "handshake": ["WIRE-010", "WIRE-020"],
    "version-mismatch": ["WIRE-022", "WIRE-091"],
    "bad-magic": ["WIRE-020", "WIRE-091"],
    "handshake-required": ["WIRE-021"],
    "oversized-frame": ["WIRE-012"],
    "empty-frame": ["WIRE-012"],
    "unknown-message": ["WIRE-013"],
    "truncated-load": ["WIRE-013"],
    "sync-fresh-session": ["WIRE-060"],
    "load-missing": ["WIRE-050", "WIRE-091"],
    "empty-commit": ["WIRE-072"],
    "unallocated-oid": ["SRV-022"],
    "quit": ["WIRE-080"],
    "new-oids-commit-load": ["WIRE-040", "WIRE-051"],
    "prefetch": ["WIRE-055", "WIRE-056"],
    "pack": ["WIRE-085"],
    "stage-then-commit": ["WIRE-070", "WIRE-071"],
    "auth-ok": ["WIRE-030", "WIRE-031"],
    "auth-wrong-proof": ["WIRE-031"],
    "auth-unknown-mechanism": ["WIRE-031"],
    "auth-required": ["SRV-080"],
    "conflicts": ["SRV-020", "SRV-023", "SRV-107", "WIRE-072"],
    "snapshots": [
        "SRV-100",
        "SRV-104",
        "WIRE-100",
        "WIRE-102",
        "WIRE-104",
        "WIRE-105",
        "WIRE-106",
        "WIRE-108",
        "WIRE-109",
        "WIRE-112",
    ],
    "snapshot-too-old": ["SRV-102", "WIRE-114"],
    "snapshot-requests-need-the-feature": ["WIRE-101"],
    "snapshot-load-at-future": ["WIRE-107"],
    "malformed-new-oids-zero": ["WIRE-013", "WIRE-091"],
    "malformed-load-trailing-byte": ["WIRE-013"],
    "malformed-refs-length": ["WIRE-014"],
    "malformed-forged-count": ["WIRE-013"],
    "malformed-hello-text": ["WIRE-013"],
    "response-as-request": ["WIRE-091"],
    "frame-above-maximum": ["WIRE-011", "WIRE-012"],
    "large-frame-before-handshake": ["WIRE-033"],
    "blobs": ["SRV-120", "SRV-122", "WIRE-130", "WIRE-132", "WIRE-133", "WIRE-134"],
    "blob-requests-need-the-feature": ["WIRE-130"],
    "blob-without-its-record": ["WIRE-135"],
    "malformed-read-blob-length": ["WIRE-131"],
    "blob-read-above-snapshot": ["WIRE-136"],
    "blob-tids": ["SRV-124", "WIRE-133", "WIRE-137"],
}


def files() -> dict[str, str]:
    """The text of every ``NAME.json`` this script writes."""
    made = {**transcripts(), **malformed(), **blob_transcripts()}
    assert set(made) == set(REQUIREMENTS), set(made) ^ set(REQUIREMENTS)
    out = {}
    for name, body in made.items():
        body = {
            "name": name,
            "fresh": body.pop("fresh", False),
            "description": body.pop("description"),
            "requirements": REQUIREMENTS[name],
            **body,
        }
        if "server" in body:
            body["server"] = body.pop("server")
        out[f"{name}.json"] = json.dumps(body, indent=1) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale files, write nothing")
    args = parser.parse_args(argv)
    wanted = files()
    stale = sorted(
        name
        for name in {*wanted, *(p.name for p in HERE.glob("*.json"))}
        if name not in wanted
        or not (HERE / name).exists()
        or (HERE / name).read_text() != wanted[name]
    )
    if args.check:
        for name in stale:
            print(f"stale: {name} (run {Path(__file__).name})", file=sys.stderr)
        return 1 if stale else 0
    for name in stale:
        if name not in wanted:
            (HERE / name).unlink()
    for name, text in wanted.items():
        (HERE / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
