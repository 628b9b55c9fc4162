"""The wire protocol codec: frames and messages, bytes in and bytes out (sans-IO).

Spec: ``spec/wire-protocol.md``.  Nothing here opens a socket; the server
(``dhruva.server.storage_server``) and the client (``dhruva.client_storage``) move the
bytes.

Theory of operation.  A connection carries a stream of *frames*: a 4-byte
big-endian payload length followed by that many payload bytes [WIRE-010].  The
first payload byte is the message type; the rest is the message body, laid out
as the spec's byte tables say.  :class:`FrameDecoder` turns a byte stream into
payloads and refuses an oversized or empty length before buffering the body
[WIRE-011], [WIRE-012].  :func:`decode_message` turns one payload into a
message object and raises :class:`~dhruva.error.ProtocolError` for anything it
cannot parse: a short body, trailing bytes, an unknown type, a bad count
[WIRE-013].  It never raises anything else, whatever the input (a Hypothesis
test feeds it random bytes).

Messages are small frozen dataclasses; each has ``encode()`` returning the
whole frame (header included), ready to write to a socket.

Authentication adds three messages (spec: "Authentication"): AUTH_CHALLENGE
(the server's nonce), AUTH (the client's nonce and proof) and AUTH_OK (the
server's proof, then HELLO_OK's fields).  Computing and checking the proofs
is :mod:`dhruva.server.security`'s; this module only lays out the bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import BinaryIO

from dhruva.error import ProtocolError
from dhruva.record import Record, new_record
from dhruva.utils import OID_SIZE

MAGIC = b"DHRV"
"""The first four body bytes of HELLO and HELLO_OK [WIRE-020]."""

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

MAX_FRAME_SIZE = 64 * 1024 * 1024
"""The largest payload (type byte and body) a peer may send [WIRE-011]: 64 MiB."""

MAX_OIDS_PER_REQUEST = 65536
"""The largest count NEW_OIDS may ask for [WIRE-041]."""

HANDSHAKE_MAX_FRAME_SIZE = 1 << 17
"""The largest payload a server accepts before the handshake is done [WIRE-033]: 128 KiB."""

NONCE_SIZE = 32
"""The size of the server and client nonces of AUTH_CHALLENGE and AUTH [WIRE-030]."""

PROOF_SIZE = 32
"""The size of an HMAC-SHA256 proof in AUTH and AUTH_OK [WIRE-031]."""

FRAME_HEADER = struct.Struct(">I")
assert FRAME_HEADER.size == 4
_U16 = struct.Struct(">H")
assert _U16.size == 2
_U32 = struct.Struct(">I")
assert _U32.size == 4
_U64 = struct.Struct(">Q")
assert _U64.size == 8
_HELLO_HEAD = struct.Struct(">4sHH")
assert _HELLO_HEAD.size == 8
_RECORD_HEAD = struct.Struct(">8sII")
assert _RECORD_HEAD.size == 16
_ERROR_HEAD = struct.Struct(">HI")
assert _ERROR_HEAD.size == 6
_READ_BLOB = struct.Struct(">8sQQI")
assert _READ_BLOB.size == 28


class MessageType(IntEnum):
    """The first payload byte.  Requests are below 0x80, responses at or above."""

    HELLO = 0x01
    NEW_OIDS = 0x02
    LOAD = 0x03
    BULK_LOAD = 0x04
    SYNC = 0x05
    STAGE = 0x06
    COMMIT = 0x07
    PACK = 0x08
    QUIT = 0x09
    STOP = 0x0A
    SIZE = 0x0B
    LIST_OIDS = 0x0C
    AUTH = 0x0D
    LOAD_AT = 0x0E
    READS = 0x0F
    HOLD = 0x10
    BLOB_CHUNK = 0x11
    READ_BLOB = 0x12

    HELLO_OK = 0x81
    OIDS = 0x82
    RECORD = 0x83
    RECORDS = 0x84
    RECORD_PREFETCH = 0x85
    COMMITTED = 0x87
    OK = 0x88
    PACK_PROGRESS = 0x89
    SIZE_IS = 0x8B
    AUTH_CHALLENGE = 0x8C
    AUTH_OK = 0x8D
    SYNCED = 0x8E
    COMMITTED_AT = 0x8F
    BLOB_DATA = 0x90
    BLOB_DATA_AT = 0x91
    ERROR = 0xFF


FEATURE_PREFETCH = "prefetch"
"""The HELLO feature asking the server to answer LOAD with RECORD_PREFETCH [WIRE-055]."""

FEATURE_PACK_PROGRESS = "pack-progress"
"""The HELLO feature asking the server to send PACK_PROGRESS frames before OK [WIRE-085]."""

FEATURE_SNAPSHOTS = "snapshots"
"""The HELLO feature asking for snapshot reads and serializable commits [WIRE-100]."""

FEATURE_BLOBS = "blobs"
"""The HELLO feature for blobs: BLOB_CHUNK, READ_BLOB and BLOB_DATA [WIRE-130]."""

FEATURE_BLOB_TIDS = "blob-tids"
"""The HELLO feature asking for BLOB_DATA_AT: the tid a SESSION_SNAPSHOT read was at [WIRE-137]."""

MAX_BLOB_CHUNK = 1 << 20
"""The most blob bytes one BLOB_CHUNK or BLOB_DATA carries, and READ_BLOB asks for [WIRE-131]."""

SESSION_SNAPSHOT = (1 << 64) - 1
"""The READ_BLOB tid meaning the session's snapshot (or the latest commit) [WIRE-133]."""

NO_HOLD = (1 << 64) - 1
"""The HOLD tid that holds nothing older than the session's snapshot [WIRE-112]."""


class ErrorCode(IntEnum):
    """Codes carried by ERROR frames (spec: "Error codes").

    Codes below 16 are fatal: the server closes the connection after sending
    them [WIRE-091].  Codes from 16 up answer one request; the session goes on.
    """

    MALFORMED = 1
    UNKNOWN_MESSAGE = 2
    VERSION_MISMATCH = 3
    FRAME_TOO_LARGE = 4
    HANDSHAKE_REQUIRED = 5
    AUTH_REQUIRED = 6
    AUTH_FAILED = 7
    TLS_REQUIRED = 8
    TIMEOUT = 9
    NO_SUCH_OBJECT = 16
    READ_CONFLICT = 17
    WRITE_CONFLICT = 18
    READ_ONLY = 19
    UNALLOCATED_OID = 20
    NOT_SUPPORTED = 21
    STORAGE_FAILURE = 22
    # 23 was SHUTTING_DOWN, which no server ever sent: retired (spec/history.md).
    TOO_LARGE = 24
    SNAPSHOT_TOO_OLD = 25

    @property
    def fatal(self) -> bool:
        return self < 16


class FrameSizeError(ProtocolError):
    """A frame header announced a payload longer than the maximum [WIRE-012]."""


def frame(payload: bytes) -> bytes:
    """Return ``payload`` with its 4-byte length header [WIRE-010]."""
    if not payload or len(payload) > MAX_FRAME_SIZE:
        raise ProtocolError(f"a frame payload is 1 to {MAX_FRAME_SIZE} bytes, not {len(payload)}")
    return FRAME_HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Split a byte stream into frame payloads.

    Feed it whatever the socket returned; it returns the payloads completed so
    far and keeps the remainder.  Raises ProtocolError (and stays broken) on a
    length of zero or above ``max_frame_size`` [WIRE-012].
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._broken: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as a payload."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data`` and return every payload it completes, in order."""
        if self._broken is not None:
            raise self._broken
        if not self._buffer and len(data) > FRAME_HEADER.size:
            # The common case, a read that is exactly one whole frame: its
            # payload, without passing through the buffer.
            (length,) = FRAME_HEADER.unpack_from(data)
            if length == len(data) - FRAME_HEADER.size and length <= self.max_frame_size:
                return [bytes(data[FRAME_HEADER.size :])]
        self._buffer += data
        payloads: list[bytes] = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= FRAME_HEADER.size:
            (length,) = FRAME_HEADER.unpack_from(buffer, start)
            # [WIRE-012] Refuse the length before waiting for (or buffering) the body.
            if length == 0:
                self._broken = ProtocolError("frame length 0: a payload has at least a type byte")
                raise self._broken
            if length > self.max_frame_size:
                self._broken = FrameSizeError(
                    f"frame length {length} exceeds the maximum of {self.max_frame_size} bytes"
                )
                raise self._broken
            end = start + FRAME_HEADER.size + length
            if len(buffer) < end:
                break
            payloads.append(bytes(buffer[start + FRAME_HEADER.size : end]))
            start = end
        if start:
            del buffer[:start]
        return payloads


class _Reader:
    """Reads fields from a payload body; every short read is a ProtocolError."""

    __slots__ = ("_data", "_offset", "_what")

    def __init__(self, data: bytes, offset: int, what: str) -> None:
        self._data = data
        self._offset = offset
        self._what = what

    def _take(self, size: int) -> bytes:
        end = self._offset + size
        if end > len(self._data):
            raise ProtocolError(
                f"{self._what} message is truncated: needs {end} bytes, has {len(self._data)}"
            )
        chunk = self._data[self._offset : end]
        self._offset = end
        return chunk

    def u16(self) -> int:
        return int(_U16.unpack(self._take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self._take(4))[0])

    def u64(self) -> int:
        return int(_U64.unpack(self._take(8))[0])

    def raw(self, size: int) -> bytes:
        return self._take(size)

    def rest(self) -> bytes:
        return self._take(len(self._data) - self._offset)

    def oid(self) -> bytes:
        return self._take(OID_SIZE)

    def oids(self) -> list[bytes]:
        count = self.u32()
        body = self._take_count(count, OID_SIZE)
        return [body[i : i + OID_SIZE] for i in range(0, len(body), OID_SIZE)]

    def _take_count(self, count: int, item_size: int) -> bytes:
        # Check the count against what is left before allocating anything, so
        # a forged count cannot make us build a huge list.
        if count * item_size > len(self._data) - self._offset:
            raise ProtocolError(f"{self._what} message claims {count} items but is too short")
        return self._take(count * item_size)

    def text(self) -> str:
        raw = self._take(self.u16())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{self._what} message holds text that is not UTF-8") from None

    def record(self) -> Record:
        oid, data_length, refs_length = _RECORD_HEAD.unpack(self._take(_RECORD_HEAD.size))
        if refs_length % OID_SIZE:
            raise ProtocolError(
                f"{self._what} message has a reference list of {refs_length} bytes,"
                " not a multiple of 8"
            )
        data = self._take(data_length)
        refs = self._take(refs_length)
        return new_record((oid, data, refs))

    def records(self) -> list[Record]:
        count = self.u32()
        if count * _RECORD_HEAD.size > len(self._data) - self._offset:
            raise ProtocolError(f"{self._what} message claims {count} records but is too short")
        return [self.record() for _ in range(count)]

    def end(self) -> None:
        # [WIRE-013] Trailing bytes mean the peer and we disagree on the layout.
        if self._offset != len(self._data):
            raise ProtocolError(
                f"{self._what} message has {len(self._data) - self._offset} unexpected"
                " trailing bytes"
            )


def _oids_body(oids: Sequence[bytes]) -> bytes:
    return _U32.pack(len(oids)) + b"".join(oids)


def _text_body(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raw = raw[:0xFFFF].decode("utf-8", "ignore").encode("utf-8")
    return _U16.pack(len(raw)) + raw


def record_body(record: Record) -> bytes:
    """Return the wire form of one record (spec: "Record layout")."""
    return (
        _RECORD_HEAD.pack(record.oid, len(record.data), len(record.refs))
        + record.data
        + record.refs
    )


def record_size(record: Record) -> int:
    """Return the encoded size of ``record`` in bytes."""
    return _RECORD_HEAD.size + len(record.data) + len(record.refs)


def _records_body(records: Sequence[Record]) -> bytes:
    return _U32.pack(len(records)) + b"".join(record_body(r) for r in records)


# --- messages ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """Client's first message: magic, protocol version and features [WIRE-020]."""

    major: int = PROTOCOL_MAJOR
    minor: int = PROTOCOL_MINOR
    features: str = ""
    magic: bytes = MAGIC
    type = MessageType.HELLO

    def encode(self) -> bytes:
        head = _HELLO_HEAD.pack(self.magic, self.major, self.minor)
        return frame(bytes([self.type]) + head + _text_body(self.features))


@dataclass(frozen=True, slots=True)
class HelloOk:
    """Server's answer to HELLO: its version, features and storage capabilities."""

    major: int = PROTOCOL_MAJOR
    minor: int = PROTOCOL_MINOR
    features: str = ""
    storage_capabilities: str = ""
    magic: bytes = MAGIC
    type = MessageType.HELLO_OK

    def encode(self) -> bytes:
        head = _HELLO_HEAD.pack(self.magic, self.major, self.minor)
        body = head + _text_body(self.features) + _text_body(self.storage_capabilities)
        return frame(bytes([self.type]) + body)


@dataclass(frozen=True, slots=True)
class NewOids:
    """Ask for ``count`` fresh oids (1 to MAX_OIDS_PER_REQUEST)."""

    count: int
    type = MessageType.NEW_OIDS

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _U32.pack(self.count))


@dataclass(frozen=True, slots=True)
class Load:
    """Ask for the current record of one oid."""

    oid: bytes
    type = MessageType.LOAD

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + self.oid)


@dataclass(frozen=True, slots=True)
class BulkLoad:
    """Ask for the records of several oids, answered in order by one RECORDS."""

    oids: Sequence[bytes]
    type = MessageType.BULK_LOAD

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _oids_body(self.oids))


@dataclass(frozen=True, slots=True)
class ListOids:
    """Ask for up to ``limit`` stored oids at or above ``start``, ascending."""

    start: bytes
    limit: int
    type = MessageType.LIST_OIDS

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + self.start + _U32.pack(self.limit))


@dataclass(frozen=True, slots=True)
class Stage:
    """Records to hold for the next COMMIT of this session (no response)."""

    records: Sequence[Record]
    type = MessageType.STAGE

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _records_body(self.records))


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit the staged records plus these, atomically, in one transaction."""

    records: Sequence[Record]
    type = MessageType.COMMIT

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _records_body(self.records))


@dataclass(frozen=True, slots=True)
class Empty:
    """A message with no body: SYNC, PACK, QUIT, STOP, SIZE, OK."""

    type: MessageType

    def encode(self) -> bytes:
        return frame(bytes([self.type]))


@dataclass(frozen=True, slots=True)
class Oids:
    """A list of oids: the answer to NEW_OIDS, SYNC and LIST_OIDS."""

    oids: Sequence[bytes]
    type = MessageType.OIDS

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _oids_body(self.oids))


@dataclass(frozen=True, slots=True)
class RecordMessage:
    """The answer to LOAD."""

    record: Record
    type = MessageType.RECORD

    def encode(self) -> bytes:
        return encode_record_message(self.record)


_RECORD_FRAME_HEAD = struct.Struct(">IB8sII")  # frame length, type, record head


def encode_record_message(record: Record) -> bytes:
    """Return ``RecordMessage(record).encode()``: the answer to every cold read, in one pass."""
    data = record.data
    refs = record.refs
    length = 1 + _RECORD_HEAD.size + len(data) + len(refs)
    if length > MAX_FRAME_SIZE:
        return frame(bytes([MessageType.RECORD]) + record_body(record))  # raises ProtocolError
    head = _RECORD_FRAME_HEAD.pack(length, MessageType.RECORD, record.oid, len(data), len(refs))
    return b"".join((head, data, refs))


@dataclass(frozen=True, slots=True)
class RecordPrefetch:
    """The answer to LOAD for a client that announced ``prefetch`` [WIRE-055].

    ``record`` is the record asked for; ``prefetched`` are records it
    references, each what a LOAD at this moment would have returned [WIRE-056].
    """

    record: Record
    prefetched: Sequence[Record]
    type = MessageType.RECORD_PREFETCH

    def encode(self) -> bytes:
        body = record_body(self.record) + _records_body(self.prefetched)
        return frame(bytes([self.type]) + body)


@dataclass(frozen=True, slots=True)
class Records:
    """The answer to BULK_LOAD: the records in the order asked."""

    records: Sequence[Record]
    type = MessageType.RECORDS

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _records_body(self.records))


@dataclass(frozen=True, slots=True)
class Committed:
    """The answer to a successful COMMIT; carries the client's invalidations [WIRE-072]."""

    invalidations: Sequence[bytes]
    type = MessageType.COMMITTED

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _oids_body(self.invalidations))


@dataclass(frozen=True, slots=True)
class PackProgress:
    """How far a running pack is; sent before PACK's answer [WIRE-085]."""

    records_copied: int
    objects: int
    type = MessageType.PACK_PROGRESS

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _U64.pack(self.records_copied) + _U64.pack(self.objects))


@dataclass(frozen=True, slots=True)
class SizeIs:
    """The answer to SIZE: the number of stored objects."""

    count: int
    type = MessageType.SIZE_IS

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _U64.pack(self.count))


@dataclass(frozen=True, slots=True)
class Error:
    """An error answer: a code, the oids concerned and a message for people."""

    code: int
    message: str = ""
    oids: Sequence[bytes] = field(default_factory=list)
    type = MessageType.ERROR

    def encode(self) -> bytes:
        body = _ERROR_HEAD.pack(self.code, len(self.oids)) + b"".join(self.oids)
        return frame(bytes([self.type]) + body + _text_body(self.message))


@dataclass(frozen=True, slots=True)
class AuthChallenge:
    """The server's answer to HELLO when it requires authentication [WIRE-030]."""

    mechanism: str
    server_nonce: bytes
    type = MessageType.AUTH_CHALLENGE

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _text_body(self.mechanism) + self.server_nonce)


@dataclass(frozen=True, slots=True)
class Auth:
    """The client's proof that it knows the shared secret [WIRE-031]."""

    mechanism: str
    client_nonce: bytes
    proof: bytes
    type = MessageType.AUTH

    def encode(self) -> bytes:
        body = _text_body(self.mechanism) + self.client_nonce + self.proof
        return frame(bytes([self.type]) + body)


@dataclass(frozen=True, slots=True)
class AuthOk:
    """The answer to a good AUTH: the server's proof, then HELLO_OK's fields [WIRE-032]."""

    server_proof: bytes
    major: int = PROTOCOL_MAJOR
    minor: int = PROTOCOL_MINOR
    features: str = ""
    storage_capabilities: str = ""
    magic: bytes = MAGIC
    type = MessageType.AUTH_OK

    def encode(self) -> bytes:
        head = _HELLO_HEAD.pack(self.magic, self.major, self.minor)
        body = (
            self.server_proof
            + head
            + _text_body(self.features)
            + _text_body(self.storage_capabilities)
        )
        return frame(bytes([self.type]) + body)


@dataclass(frozen=True, slots=True)
class LoadAt:
    """Ask for the record of ``oid`` as the committed transaction ``tid`` left it [WIRE-106]."""

    oid: bytes
    tid: int
    type = MessageType.LOAD_AT

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + self.oid + _U64.pack(self.tid))


@dataclass(frozen=True, slots=True)
class Reads:
    """Oids the next COMMIT's transaction read (no response) [WIRE-108]."""

    oids: Sequence[bytes]
    type = MessageType.READS

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _oids_body(self.oids))


@dataclass(frozen=True, slots=True)
class Hold:
    """The oldest snapshot the client still reads at (no response) [WIRE-112].

    :data:`NO_HOLD` holds nothing older than the session's own snapshot.
    """

    tid: int
    type = MessageType.HOLD

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _U64.pack(self.tid))


@dataclass(frozen=True, slots=True)
class Synced:
    """The answer to SYNC in a snapshot session: the new snapshot and the invalidations."""

    tid: int
    invalidations: Sequence[bytes]
    type = MessageType.SYNCED

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _U64.pack(self.tid) + _oids_body(self.invalidations))


@dataclass(frozen=True, slots=True)
class CommittedAt:
    """The answer to a successful COMMIT in a snapshot session [WIRE-104]."""

    tid: int
    invalidations: Sequence[bytes]
    type = MessageType.COMMITTED_AT

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _U64.pack(self.tid) + _oids_body(self.invalidations))


@dataclass(frozen=True, slots=True)
class BlobChunk:
    """The next bytes of ``oid``'s blob for the next COMMIT (no response) [WIRE-132]."""

    oid: bytes
    data: bytes
    type = MessageType.BLOB_CHUNK

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + self.oid + self.data)


@dataclass(frozen=True, slots=True)
class ReadBlob:
    """Ask for ``length`` bytes at ``offset`` of ``oid``'s blob as of ``tid`` [WIRE-133]."""

    oid: bytes
    tid: int
    offset: int
    length: int
    type = MessageType.READ_BLOB

    def encode(self) -> bytes:
        body = _READ_BLOB.pack(self.oid, self.tid, self.offset, self.length)
        return frame(bytes([self.type]) + body)


@dataclass(frozen=True, slots=True)
class BlobData:
    """The answer to READ_BLOB: the bytes read; fewer than asked means the end [WIRE-134]."""

    data: bytes
    type = MessageType.BLOB_DATA

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + self.data)


@dataclass(frozen=True, slots=True)
class BlobDataAt:
    """The answer to a SESSION_SNAPSHOT READ_BLOB outside snapshots, with ``blob-tids``.

    ``tid`` is the commit the server read at (never :data:`SESSION_SNAPSHOT`);
    ``data`` is as BLOB_DATA's [WIRE-137].  The client names ``tid`` in the
    reader's later READ_BLOB requests, so that every piece is of one version.
    """

    tid: int
    data: bytes
    type = MessageType.BLOB_DATA_AT

    def encode(self) -> bytes:
        return frame(bytes([self.type]) + _U64.pack(self.tid) + self.data)


def blob_chunk_frames(oid: bytes, file: BinaryIO) -> Iterator[bytes]:
    """Yield the BLOB_CHUNK frames of ``file``'s content from its position on [WIRE-132].

    One frame per :data:`MAX_BLOB_CHUNK` bytes read, so that memory holds
    one chunk whatever the file's size; an empty file gives one frame with
    no data (the blob exists and is empty).
    """
    sent = False
    while True:
        data = file.read(MAX_BLOB_CHUNK)
        if not data:
            break
        sent = True
        yield BlobChunk(oid, bytes(data)).encode()
    if not sent:
        yield BlobChunk(oid, b"").encode()


def snapshot_too_old(tid: int, oldest: int, message: str = "") -> Error:
    """The ERROR SNAPSHOT_TOO_OLD for snapshot ``tid``, ``oldest`` being still served [WIRE-114].

    Its "oids" field holds two u64 values, not oids: ``tid`` then ``oldest``.
    """
    return Error(ErrorCode.SNAPSHOT_TOO_OLD, message, [_U64.pack(tid), _U64.pack(oldest)])


def snapshot_bounds(error: Error) -> tuple[int, int]:
    """The ``(tid, oldest)`` of an ERROR SNAPSHOT_TOO_OLD [WIRE-114].

    Raises ProtocolError when the error does not carry exactly the two values.
    """
    if error.code != ErrorCode.SNAPSHOT_TOO_OLD or len(error.oids) != 2:
        raise ProtocolError("a SNAPSHOT_TOO_OLD error carries exactly two values: tid and oldest")
    tid, oldest = (int(_U64.unpack(value)[0]) for value in error.oids)
    return tid, oldest


Message = (
    Hello
    | HelloOk
    | NewOids
    | Load
    | BulkLoad
    | ListOids
    | Stage
    | Commit
    | Empty
    | Oids
    | RecordMessage
    | RecordPrefetch
    | Records
    | Committed
    | SizeIs
    | PackProgress
    | Error
    | AuthChallenge
    | Auth
    | AuthOk
    | LoadAt
    | Reads
    | Hold
    | Synced
    | CommittedAt
    | BlobChunk
    | ReadBlob
    | BlobData
    | BlobDataAt
)

_EMPTY_TYPES = frozenset(
    {
        MessageType.SYNC,
        MessageType.PACK,
        MessageType.QUIT,
        MessageType.STOP,
        MessageType.SIZE,
        MessageType.OK,
    }
)


_MESSAGE_TYPES: dict[int, MessageType] = {kind.value: kind for kind in MessageType}
_RECORD_TYPE = MessageType.RECORD.value
_RECORD_DATA_AT = 1 + _RECORD_HEAD.size  # a RECORD's data, after its type byte and head
_LOAD_TYPE = MessageType.LOAD.value
#: The first bytes of every LOAD frame, ``Load(oid).encode()`` without its oid:
#: the frame length (9) and the type byte.
LOAD_FRAME_HEAD = FRAME_HEADER.pack(1 + OID_SIZE) + bytes([_LOAD_TYPE])


def decode_message(payload: bytes) -> Message:
    """Parse one frame payload into a message.

    Raises ProtocolError, and nothing else, when the payload is not a
    well-formed message of a known type [WIRE-013].
    """
    if not payload:
        raise ProtocolError("empty frame payload")
    first = payload[0]
    # The two messages of every cold read, well formed, without the general
    # reader; anything else about them (a wrong length) goes on below, which
    # says what is wrong.
    if first == _RECORD_TYPE:
        if len(payload) >= _RECORD_DATA_AT:
            oid, data_length, refs_length = _RECORD_HEAD.unpack_from(payload, 1)
            refs_at = _RECORD_DATA_AT + data_length
            if refs_at + refs_length == len(payload) and not refs_length % OID_SIZE:
                data = payload[_RECORD_DATA_AT:refs_at]
                return RecordMessage(new_record((oid, data, payload[refs_at:])))
    elif first == _LOAD_TYPE and len(payload) == 1 + OID_SIZE:
        return Load(payload[1:])
    kind = _MESSAGE_TYPES.get(first)
    if kind is None:
        raise ProtocolError(f"unknown message type 0x{first:02x}")
    reader = _Reader(payload, 1, kind.name)
    message: Message
    if kind in _EMPTY_TYPES:
        message = Empty(kind)
    elif kind is MessageType.HELLO:
        magic, major, minor = _HELLO_HEAD.unpack(reader.raw(_HELLO_HEAD.size))
        message = Hello(major, minor, reader.text(), magic)
    elif kind is MessageType.HELLO_OK:
        magic, major, minor = _HELLO_HEAD.unpack(reader.raw(_HELLO_HEAD.size))
        message = HelloOk(major, minor, reader.text(), reader.text(), magic)
    elif kind is MessageType.NEW_OIDS:
        count = reader.u32()
        # [WIRE-041] A count of 0 or above the maximum is malformed.
        if not 1 <= count <= MAX_OIDS_PER_REQUEST:
            raise ProtocolError(f"NEW_OIDS count {count} is outside 1..{MAX_OIDS_PER_REQUEST}")
        message = NewOids(count)
    elif kind is MessageType.LOAD:
        message = Load(reader.oid())
    elif kind is MessageType.BULK_LOAD:
        message = BulkLoad(reader.oids())
    elif kind is MessageType.LIST_OIDS:
        message = ListOids(reader.oid(), reader.u32())
    elif kind is MessageType.STAGE:
        message = Stage(reader.records())
    elif kind is MessageType.COMMIT:
        message = Commit(reader.records())
    elif kind is MessageType.OIDS:
        message = Oids(reader.oids())
    elif kind is MessageType.RECORD:
        message = RecordMessage(reader.record())
    elif kind is MessageType.RECORD_PREFETCH:
        message = RecordPrefetch(reader.record(), reader.records())
    elif kind is MessageType.RECORDS:
        message = Records(reader.records())
    elif kind is MessageType.COMMITTED:
        message = Committed(reader.oids())
    elif kind is MessageType.PACK_PROGRESS:
        message = PackProgress(reader.u64(), reader.u64())
    elif kind is MessageType.SIZE_IS:
        message = SizeIs(reader.u64())
    elif kind is MessageType.AUTH_CHALLENGE:
        message = AuthChallenge(reader.text(), reader.raw(NONCE_SIZE))
    elif kind is MessageType.AUTH:
        message = Auth(reader.text(), reader.raw(NONCE_SIZE), reader.raw(PROOF_SIZE))
    elif kind is MessageType.LOAD_AT:
        message = LoadAt(reader.oid(), reader.u64())
    elif kind is MessageType.READS:
        message = Reads(reader.oids())
    elif kind is MessageType.HOLD:
        message = Hold(reader.u64())
    elif kind is MessageType.SYNCED:
        message = Synced(reader.u64(), reader.oids())
    elif kind is MessageType.COMMITTED_AT:
        message = CommittedAt(reader.u64(), reader.oids())
    elif kind is MessageType.BLOB_CHUNK:
        oid = reader.oid()
        data = reader.rest()
        # [WIRE-131] A chunk carries at most MAX_BLOB_CHUNK bytes.
        if len(data) > MAX_BLOB_CHUNK:
            raise ProtocolError(
                f"BLOB_CHUNK carries {len(data)} bytes; at most {MAX_BLOB_CHUNK} are allowed"
            )
        message = BlobChunk(oid, data)
    elif kind is MessageType.READ_BLOB:
        oid, tid, offset, length = _READ_BLOB.unpack(reader.raw(_READ_BLOB.size))
        if not 1 <= length <= MAX_BLOB_CHUNK:
            raise ProtocolError(f"READ_BLOB length {length} is outside 1..{MAX_BLOB_CHUNK}")
        message = ReadBlob(oid, tid, offset, length)
    elif kind is MessageType.BLOB_DATA:
        data = reader.rest()
        if len(data) > MAX_BLOB_CHUNK:
            raise ProtocolError(
                f"BLOB_DATA carries {len(data)} bytes; at most {MAX_BLOB_CHUNK} are allowed"
            )
        message = BlobData(data)
    elif kind is MessageType.BLOB_DATA_AT:
        # [WIRE-137] A body shorter than its tid is truncated (_Reader says so).
        tid = reader.u64()
        if tid == SESSION_SNAPSHOT:
            raise ProtocolError(
                "BLOB_DATA_AT names the tid SESSION_SNAPSHOT; it must name the commit read at"
            )
        data = reader.rest()
        if len(data) > MAX_BLOB_CHUNK:
            raise ProtocolError(
                f"BLOB_DATA_AT carries {len(data)} bytes; at most {MAX_BLOB_CHUNK} are allowed"
            )
        message = BlobDataAt(tid, data)
    elif kind is MessageType.AUTH_OK:
        proof = reader.raw(PROOF_SIZE)
        magic, major, minor = _HELLO_HEAD.unpack(reader.raw(_HELLO_HEAD.size))
        message = AuthOk(proof, major, minor, reader.text(), reader.text(), magic)
    else:
        assert kind is MessageType.ERROR
        code, count = _ERROR_HEAD.unpack(reader.raw(_ERROR_HEAD.size))
        body = reader._take_count(count, OID_SIZE)
        oids = [body[i : i + OID_SIZE] for i in range(0, len(body), OID_SIZE)]
        message = Error(code, reader.text(), oids)
    reader.end()
    return message


def reads_frames(oids: Sequence[bytes], max_frame_size: int = MAX_FRAME_SIZE) -> list[bytes]:
    """Encode a transaction's read set as READS frames, each within ``max_frame_size``.

    No oid: no frame, so a transaction that read nothing costs nothing [WIRE-108].
    """
    per_frame = (max_frame_size - 1 - _U32.size) // OID_SIZE
    return [Reads(oids[i : i + per_frame]).encode() for i in range(0, len(oids), per_frame)]


def split_commit(records: Iterable[Record], max_frame_size: int = MAX_FRAME_SIZE) -> list[bytes]:
    """Encode a transaction as zero or more STAGE frames and one COMMIT frame.

    Each frame stays within ``max_frame_size`` [WIRE-070].  Raises
    ProtocolError when a single record cannot fit in any frame.
    """
    # Payload overhead: the type byte and the record count.
    budget = max_frame_size - 1 - _U32.size
    frames: list[bytes] = []
    chunk: list[Record] = []
    chunk_size = 0
    for record in records:
        size = record_size(record)
        if size > budget:
            raise ProtocolError(
                f"object {int.from_bytes(record.oid, 'big')} is {size} bytes encoded;"
                f" the wire protocol carries at most {budget} bytes per object"
            )
        if chunk_size + size > budget:
            frames.append(Stage(chunk).encode())
            chunk, chunk_size = [], 0
        chunk.append(record)
        chunk_size += size
    frames.append(Commit(chunk).encode())
    return frames
