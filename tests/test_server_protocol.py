"""The server's session state machine driven with bytes only, no sockets.

Spec: wire-protocol.md ("Session state machine", "Handshake",
"Authentication"), server.md ("Security", "Limits").  Every test feeds
:class:`~dhruva.server.session.ServerSession` bytes, reads its events, answers
them as the server would, and decodes the bytes it has to send.
"""

from __future__ import annotations

import pytest

from dhruva import wire
from dhruva.error import ProtocolError
from dhruva.record import Record
from dhruva.server import security
from dhruva.server.session import (
    FEATURES,
    NEED_DATA,
    OUTPUT_HIGH_WATER,
    PAUSED,
    BulkLoad,
    Commit,
    Held,
    ListOids,
    Load,
    LoadAt,
    NewOids,
    Pack,
    Ready,
    Refused,
    ServerLimits,
    ServerSession,
    SessionState,
    Size,
    Stop,
    Sync,
    TransactionRefused,
)

SECRET = b"s3cret-for-tests"
SERVER_NONCE = bytes(range(32))
CLIENT_NONCE = bytes(range(32, 64))
OID = (7).to_bytes(8, "big")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(
    limits: ServerLimits | None = None, secret: bytes | None = None, tls: bool = False
) -> tuple[ServerSession, Clock]:
    clock = Clock()
    session = ServerSession(
        limits or ServerLimits(),
        storage_capabilities="pack history",
        secret=secret,
        new_nonce=lambda: SERVER_NONCE,
        tls=tls,
        clock=clock,
    )
    return session, clock


def take_output(session: ServerSession) -> list[wire.Message]:
    """Decode (and consume) everything the session has to send."""
    data = bytes(session.data_to_send())
    session.bytes_sent(len(data))
    decoder = wire.FrameDecoder()
    return [wire.decode_message(payload) for payload in decoder.feed(data)]


def events(session: ServerSession) -> list[object]:
    """Every event up to NEED_DATA or PAUSED (the sentinel included)."""
    found: list[object] = []
    while True:
        event = session.next_event()
        found.append(event)
        if event is NEED_DATA or event is PAUSED:
            return found


def ready_session(**kwargs: object) -> tuple[ServerSession, Clock]:
    session, clock = make(**kwargs)  # type: ignore[arg-type]
    session.receive_data(wire.Hello(features="prefetch").encode())
    assert events(session) == [Ready(False), NEED_DATA]
    assert take_output(session) == [
        wire.HelloOk(
            features="stage commit-sync bulk-load list-oids prefetch pack-progress",
            storage_capabilities="pack history",
        )
    ]
    return session, clock


def assert_fatal(session: ServerSession, code: wire.ErrorCode) -> None:
    found = events(session)
    assert len(found) == 2 and isinstance(found[0], Refused) and found[0].code is code
    assert found[1] is NEED_DATA
    (answer,) = take_output(session)
    assert isinstance(answer, wire.Error) and answer.code == code
    assert session.state is SessionState.CLOSED and session.finished


# --- the handshake ------------------------------------------------------------------


@pytest.mark.req("WIRE-020", "WIRE-025")
def test_hello_without_secret_makes_the_session_ready() -> None:
    session, _ = make()
    assert session.state is SessionState.CONNECTED
    assert session.next_event() is NEED_DATA
    session, _ = ready_session()
    assert session.state is SessionState.READY
    assert session.features == frozenset({"prefetch"})


@pytest.mark.req("WIRE-030", "WIRE-031", "WIRE-025")
def test_hello_then_auth_with_the_right_proof() -> None:
    session, _ = make(secret=SECRET)
    session.receive_data(wire.Hello().encode())
    assert events(session) == [NEED_DATA]
    assert session.state is SessionState.AUTHENTICATING
    assert take_output(session) == [wire.AuthChallenge(security.AUTH_MECHANISM, SERVER_NONCE)]
    proof = security.client_proof(SECRET, SERVER_NONCE, CLIENT_NONCE)
    session.receive_data(wire.Auth(security.AUTH_MECHANISM, CLIENT_NONCE, proof).encode())
    assert events(session) == [Ready(True), NEED_DATA]
    (answer,) = take_output(session)
    assert isinstance(answer, wire.AuthOk)
    assert answer.server_proof == security.server_proof(SECRET, SERVER_NONCE, CLIENT_NONCE)
    assert session.state is SessionState.READY


@pytest.mark.req("WIRE-031", "SRV-040")
def test_auth_with_a_wrong_proof_is_refused_and_closes() -> None:
    session, _ = make(secret=SECRET)
    session.receive_data(wire.Hello().encode())
    events(session)
    take_output(session)
    wrong = security.client_proof(b"another secret", SERVER_NONCE, CLIENT_NONCE)
    session.receive_data(wire.Auth(security.AUTH_MECHANISM, CLIENT_NONCE, wrong).encode())
    assert_fatal(session, wire.ErrorCode.AUTH_FAILED)


@pytest.mark.req("SRV-080")
def test_a_request_instead_of_auth_is_refused() -> None:
    session, _ = make(secret=SECRET)
    session.receive_data(wire.Hello().encode())
    assert events(session) == [NEED_DATA]
    take_output(session)  # the challenge
    session.receive_data(wire.Load(OID).encode())
    assert_fatal(session, wire.ErrorCode.AUTH_REQUIRED)


@pytest.mark.req("WIRE-021")
def test_the_first_message_must_be_hello() -> None:
    session, _ = make()
    session.receive_data(wire.Load(OID).encode())
    assert_fatal(session, wire.ErrorCode.HANDSHAKE_REQUIRED)


@pytest.mark.req("WIRE-022")
def test_an_unknown_major_version_is_refused() -> None:
    session, _ = make()
    session.receive_data(wire.Hello(major=wire.PROTOCOL_MAJOR + 1).encode())
    assert_fatal(session, wire.ErrorCode.VERSION_MISMATCH)


@pytest.mark.req("WIRE-033", "SRV-040")
def test_a_frame_over_the_handshake_limit_is_refused_before_its_body() -> None:
    session, _ = make()
    # Only the length prefix arrives: the limit is applied before buffering.
    session.receive_data((wire.HANDSHAKE_MAX_FRAME_SIZE + 1).to_bytes(4, "big"))
    assert_fatal(session, wire.ErrorCode.FRAME_TOO_LARGE)


@pytest.mark.req("WIRE-033")
def test_the_frame_limit_grows_once_ready() -> None:
    session, _ = ready_session()
    big = Record(OID, b"x" * (wire.HANDSHAKE_MAX_FRAME_SIZE + 10), b"")
    session.receive_data(wire.Stage([big]).encode())
    assert events(session) == [NEED_DATA]
    assert session.state is SessionState.STAGING


@pytest.mark.req("SRV-081", "WIRE-025")
def test_the_handshake_deadline_answers_timeout() -> None:
    session, clock = make()
    clock.now += 9.9
    assert not session.expire(clock.now)
    clock.now += 0.2
    assert not session.expire(clock.now)
    assert_fatal(session, wire.ErrorCode.TIMEOUT)


@pytest.mark.req("SRV-081")
def test_a_tls_session_past_its_deadline_is_dropped_at_once() -> None:
    session, clock = make(tls=True)
    assert session.state is SessionState.TLS
    clock.now += 11
    assert session.expire(clock.now)
    assert session.closed


@pytest.mark.req("SRV-081")
def test_an_idle_ready_session_times_out() -> None:
    session, clock = ready_session(limits=ServerLimits(idle_timeout_s=5))
    clock.now += 4
    assert not session.expire(clock.now)
    assert session.state is SessionState.READY
    clock.now += 2
    session.expire(clock.now)
    assert_fatal(session, wire.ErrorCode.TIMEOUT)


@pytest.mark.req("WIRE-034", "WIRE-025")
def test_tls_state_until_the_loop_reports_tls_up() -> None:
    session, _ = make(tls=True)
    session.tls_established()
    assert session.state is SessionState.CONNECTED
    session, _ = make(tls=True)
    session.fail(wire.ErrorCode.TLS_REQUIRED, "this server requires TLS")
    assert_fatal(session, wire.ErrorCode.TLS_REQUIRED)


# --- requests -----------------------------------------------------------------------


REQUESTS = [
    (wire.Load(OID), Load(OID), wire.RecordMessage(Record(OID, b"v", b""))),
    (wire.BulkLoad([OID, OID]), BulkLoad([OID, OID]), wire.Records([])),
    (wire.NewOids(2), NewOids(2), wire.Oids([OID, OID])),
    (wire.Empty(wire.MessageType.SYNC), Sync(), wire.Oids([])),
    (wire.Empty(wire.MessageType.SIZE), Size(), wire.SizeIs(3)),
    (wire.ListOids(OID, 10), ListOids(OID, 10), wire.Oids([OID])),
    (wire.Empty(wire.MessageType.PACK), Pack(), wire.Empty(wire.MessageType.OK)),
]


@pytest.mark.req("WIRE-024", "WIRE-025")
@pytest.mark.parametrize(("message", "event", "answer"), REQUESTS, ids=lambda v: type(v).__name__)
def test_each_request_becomes_an_event_answered_once(
    message: wire.Message, event: object, answer: wire.Message
) -> None:
    session, _ = ready_session()
    session.receive_data(message.encode())
    assert session.next_event() == event
    assert session.outstanding == event
    # Until it is answered, nothing else comes out.
    assert session.next_event() is PAUSED
    session.send(answer)
    assert session.next_event() is NEED_DATA
    assert take_output(session) == [answer]
    assert session.state is SessionState.READY


@pytest.mark.req("WIRE-025")
def test_stage_then_commit_carries_every_record_and_returns_to_ready() -> None:
    session, _ = ready_session()
    first = Record(OID, b"one", b"")
    second = Record((8).to_bytes(8, "big"), b"two", OID)
    session.receive_data(wire.Stage([first]).encode())
    assert events(session) == [NEED_DATA]
    assert session.state is SessionState.STAGING
    session.receive_data(wire.Commit([second]).encode())
    assert session.next_event() == Commit([first, second], [])
    assert session.state is SessionState.READY
    assert take_output(session) == []  # STAGE has no answer
    session.send(wire.Committed([]))
    assert take_output(session) == [wire.Committed([])]


@pytest.mark.req("SRV-085")
def test_a_transaction_over_the_staging_cap_is_refused_not_fatal() -> None:
    session, _ = ready_session(limits=ServerLimits(max_staged_bytes=100))
    big = Record(OID, b"x" * 200, b"")
    session.receive_data(wire.Stage([big]).encode() + wire.Commit([]).encode())
    found = events(session)
    assert isinstance(found[0], TransactionRefused) and found[1] is NEED_DATA
    (answer,) = take_output(session)
    assert isinstance(answer, wire.Error) and answer.code == wire.ErrorCode.TOO_LARGE
    assert session.state is SessionState.READY


@pytest.mark.req("WIRE-025")
def test_stop_is_answered_then_closes_and_quit_closes_silently() -> None:
    session, _ = ready_session()
    session.receive_data(wire.Empty(wire.MessageType.STOP).encode())
    assert session.next_event() == Stop()
    session.send(wire.Empty(wire.MessageType.OK))
    assert session.closed and not session.finished
    assert take_output(session) == [wire.Empty(wire.MessageType.OK)]
    assert session.finished
    session, _ = ready_session()
    session.receive_data(wire.Empty(wire.MessageType.QUIT).encode() + wire.Load(OID).encode())
    assert events(session) == [NEED_DATA]
    assert session.finished and take_output(session) == []


@pytest.mark.req("SRV-041")
def test_peer_closing_drops_the_staged_records() -> None:
    session, _ = ready_session()
    session.receive_data(wire.Stage([Record(OID, b"v", b"")]).encode())
    events(session)
    assert session.mid_request
    session.receive_data(b"")
    assert session.closed and not session.mid_request


def test_answering_with_nothing_outstanding_is_a_protocol_error() -> None:
    session, _ = ready_session()
    with pytest.raises(ProtocolError, match="no request to answer"):
        session.send(wire.Oids([]))
    with pytest.raises(ProtocolError, match="PACK_PROGRESS"):
        session.send_progress(wire.PackProgress(1, 2))


@pytest.mark.req("WIRE-085")
def test_pack_progress_does_not_answer_the_pack() -> None:
    session, _ = ready_session()
    session.receive_data(wire.Empty(wire.MessageType.PACK).encode())
    assert session.next_event() == Pack()
    session.send_progress(wire.PackProgress(1, 10))
    assert session.next_event() is PAUSED
    session.send(wire.Empty(wire.MessageType.OK))
    assert take_output(session) == [wire.PackProgress(1, 10), wire.Empty(wire.MessageType.OK)]


# --- malformed input ----------------------------------------------------------------


@pytest.mark.req("WIRE-013", "SRV-040", "WIRE-025")
def test_a_malformed_message_answers_error_then_closed() -> None:
    session, _ = ready_session()
    # A LOAD whose body is 3 bytes short, then a request that must not be served.
    session.receive_data(
        wire.frame(bytes([wire.MessageType.LOAD]) + b"12345") + wire.Load(OID).encode()
    )
    assert_fatal(session, wire.ErrorCode.MALFORMED)
    session.receive_data(wire.Load(OID).encode())
    assert session.next_event() is NEED_DATA and take_output(session) == []


@pytest.mark.req("WIRE-013", "SRV-040")
def test_an_unknown_message_type_is_refused() -> None:
    session, _ = ready_session()
    session.receive_data(wire.frame(b"\x7f"))
    assert_fatal(session, wire.ErrorCode.UNKNOWN_MESSAGE)


@pytest.mark.req("WIRE-012", "SRV-040")
def test_a_zero_length_frame_is_malformed() -> None:
    session, _ = ready_session()
    session.receive_data(b"\0\0\0\0")
    assert_fatal(session, wire.ErrorCode.MALFORMED)


@pytest.mark.req("SRV-040")
def test_a_response_type_sent_as_a_request_is_refused() -> None:
    session, _ = ready_session()
    session.receive_data(wire.Hello().encode())
    assert_fatal(session, wire.ErrorCode.UNKNOWN_MESSAGE)


# --- framing and order --------------------------------------------------------------


@pytest.mark.req("WIRE-024")
def test_pipelined_requests_in_one_chunk_are_answered_in_order() -> None:
    session, _ = ready_session()
    session.receive_data(
        wire.Empty(wire.MessageType.SIZE).encode()
        + wire.Commit([Record(OID, b"v", b"")]).encode()
        + wire.Load(OID).encode()
    )
    assert session.next_event() == Size()
    session.send(wire.SizeIs(1))
    commit = session.next_event()
    assert isinstance(commit, Commit)
    # The COMMIT is answered passes later (group commit); the LOAD waits for it.
    assert session.next_event() is PAUSED
    assert session.next_event() is PAUSED
    session.send(wire.Committed([]))
    assert session.next_event() == Load(OID)
    session.send(wire.RecordMessage(Record(OID, b"v", b"")))
    assert take_output(session) == [
        wire.SizeIs(1),
        wire.Committed([]),
        wire.RecordMessage(Record(OID, b"v", b"")),
    ]


@pytest.mark.req("WIRE-024")
def test_a_load_read_alone_is_the_same_event_in_the_same_order() -> None:
    """One whole LOAD per read skips the frame decoder; nothing else may change."""
    load = wire.Load(OID).encode()
    record = wire.RecordMessage(Record(OID, b"v", b""))
    # Alone, after an answered request: the event, and the answer in order.
    session, clock = ready_session()
    clock.now += 5
    session.receive_data(load)
    assert session.last_active == clock.now
    assert session.next_event() == Load(OID)
    assert session.outstanding == Load(OID)
    assert session.next_event() is PAUSED  # answered once, as any request
    session.send(record)
    assert session.next_event() is NEED_DATA
    assert take_output(session) == [record]
    # While a COMMIT is outstanding, and behind a request still queued: in order.
    session.receive_data(wire.Commit([Record(OID, b"w", b"")]).encode())
    assert isinstance(session.next_event(), Commit)
    session.receive_data(load)
    assert session.next_event() is PAUSED
    session.send(wire.Committed([]))
    assert session.next_event() == Load(OID)
    session.send(record)
    session.receive_data(wire.Empty(wire.MessageType.SIZE).encode())
    session.receive_data(load)
    assert session.next_event() == Size()
    session.send(wire.SizeIs(1))
    assert session.next_event() == Load(OID)
    session.send(record)
    assert take_output(session) == [wire.Committed([]), record, wire.SizeIs(1), record]
    # Behind half a frame: the decoder's, and an error for what it makes.
    session.receive_data(load[:3])
    session.receive_data(load)
    assert_fatal(session, wire.ErrorCode.MALFORMED)


def test_send_record_answers_as_send_does() -> None:
    record = Record(OID, b"v", (3).to_bytes(8, "big"))
    session, _ = ready_session()
    with pytest.raises(ProtocolError):
        session.send_record(record)  # nothing outstanding
    session.receive_data(wire.Load(OID).encode() + wire.BulkLoad([OID]).encode())
    assert session.next_event() == Load(OID)
    session.send_record(record)
    assert session.next_event() == BulkLoad([OID])
    session.send_record(record)  # not a LOAD's answer: the general send
    assert take_output(session) == [wire.RecordMessage(record)] * 2


def test_a_load_before_hello_or_after_close_is_not_served() -> None:
    session, _ = make()
    session.receive_data(wire.Load(OID).encode())
    assert_fatal(session, wire.ErrorCode.HANDSHAKE_REQUIRED)
    # A LOAD received and not handed out yet keeps an idle session open
    # (the queue's rule); once answered, idleness closes it.
    session, clock = ready_session(limits=ServerLimits(idle_timeout_s=1.0))
    session.receive_data(wire.Load(OID).encode())
    assert session.requests_waiting
    clock.now += 5
    assert session.expire(clock.now) is False
    assert session.next_event() == Load(OID)
    session.send(wire.RecordMessage(Record(OID, b"v", b"")))
    clock.now += 5
    session.expire(clock.now)
    assert session.closed and not session.requests_waiting
    # A LOAD read after the session closed is ignored.
    session.receive_data(wire.Load(OID).encode())
    assert not session.requests_waiting
    found = events(session)
    assert not any(isinstance(event, Load) for event in found)


@pytest.mark.req("WIRE-010", "WIRE-024")
def test_a_frame_split_across_many_chunks() -> None:
    session, _ = make()
    data = wire.Hello().encode() + wire.BulkLoad([OID] * 50).encode()
    for index in range(len(data) - 1):
        session.receive_data(data[index : index + 1])
    found = events(session)
    assert found == [Ready(False), NEED_DATA]
    assert session.mid_request
    session.receive_data(data[-1:])
    assert session.next_event() == BulkLoad([OID] * 50)
    assert not session.mid_request


@pytest.mark.req("SRV-082")
def test_back_pressure_pauses_reading_past_the_pending_limits() -> None:
    session, _ = ready_session(limits=ServerLimits(max_pending_requests=3))
    size = wire.Empty(wire.MessageType.SIZE).encode()
    session.receive_data(size * 2)
    assert not session.reading_paused
    session.receive_data(size)
    assert session.reading_paused
    for _ in range(3):
        assert session.next_event() == Size()
        session.send(wire.SizeIs(0))
    assert not session.reading_paused
    # Unsent answers count too.
    session, _ = ready_session(limits=ServerLimits(max_pending_bytes=64))
    session.receive_data(size)
    session.next_event()
    session.send(wire.Oids([OID] * 10))
    assert session.reading_paused
    take_output(session)
    assert not session.reading_paused


@pytest.mark.req("SRV-082")
def test_unsent_output_past_the_high_water_mark_pauses_requests() -> None:
    session, _ = ready_session()
    record = Record(OID, b"x" * (OUTPUT_HIGH_WATER + 1), b"")
    session.receive_data(wire.Load(OID).encode() * 2)
    assert session.next_event() == Load(OID)
    session.send(wire.RecordMessage(record))
    assert session.next_event() is PAUSED
    session.bytes_sent(len(session.data_to_send()))
    assert session.next_event() == Load(OID)


# --- snapshots (wire protocol, "Snapshots") ------------------------------------------

SNAPSHOT_FEATURES = FEATURES + " snapshots"


def snapshot_session(
    client_features: str = "snapshots", server_features: str = SNAPSHOT_FEATURES, **limits: int
) -> ServerSession:
    session = ServerSession(
        ServerLimits(**limits),  # type: ignore[arg-type]
        storage_capabilities="pack snapshots",
        new_nonce=lambda: SERVER_NONCE,
        clock=Clock(),
        features=server_features,
    )
    session.receive_data(wire.Hello(features=client_features).encode())
    assert events(session) == [Ready(False), NEED_DATA]
    (hello_ok,) = take_output(session)
    assert isinstance(hello_ok, wire.HelloOk) and hello_ok.features == server_features
    return session


@pytest.mark.req("WIRE-100")
def test_a_snapshot_session_needs_the_feature_on_both_ends() -> None:
    assert snapshot_session().snapshots
    assert not snapshot_session(client_features="prefetch").snapshots
    assert not snapshot_session(server_features=FEATURES).snapshots


@pytest.mark.req("WIRE-108", "WIRE-112", "WIRE-106")
def test_reads_come_with_the_commit_and_hold_is_a_note() -> None:
    session = snapshot_session()
    other = (8).to_bytes(8, "big")
    record = Record(OID, b"v", b"")
    session.receive_data(
        wire.Hold(3).encode()
        + wire.Reads([other]).encode()
        + wire.Stage([record]).encode()
        + wire.Reads([OID]).encode()
        + wire.Commit([]).encode()
    )
    assert session.next_event() == Held(3)
    assert session.next_event() == Commit([record], [other, OID])
    assert take_output(session) == []  # HOLD and READS have no answer
    session.send(wire.CommittedAt(4, []))
    assert take_output(session) == [wire.CommittedAt(4, [])]
    # The next transaction starts with an empty read set.
    session.receive_data(wire.Commit([]).encode() + wire.LoadAt(OID, 2).encode())
    assert session.next_event() == Commit([], [])
    session.send(wire.CommittedAt(4, []))
    assert session.next_event() == LoadAt(OID, 2)


@pytest.mark.req("WIRE-108")
def test_reads_move_to_staging_count_against_the_cap_and_die_with_the_session() -> None:
    session = snapshot_session(max_staged_bytes=64)
    session.receive_data(wire.Reads([OID] * 4).encode())
    assert events(session) == [NEED_DATA]
    assert session.state is SessionState.STAGING and session.mid_request
    session.receive_data(wire.Reads([OID] * 5).encode() + wire.Commit([]).encode())
    found = events(session)
    assert isinstance(found[0], TransactionRefused)
    (answer,) = take_output(session)
    assert isinstance(answer, wire.Error) and answer.code == wire.ErrorCode.TOO_LARGE
    assert session.state is SessionState.READY and not session.mid_request
    session.receive_data(wire.Reads([OID]).encode())
    session.receive_data(b"")
    assert session.closed and not session.mid_request


@pytest.mark.req("WIRE-101")
@pytest.mark.parametrize(
    "request_",
    [wire.LoadAt(OID, 0), wire.Reads([OID]), wire.Hold(0)],
    ids=["load-at", "reads", "hold"],
)
def test_snapshot_requests_without_the_feature_are_fatal(request_: wire.Message) -> None:
    session = snapshot_session(client_features="prefetch")
    session.receive_data(request_.encode())
    assert_fatal(session, wire.ErrorCode.UNKNOWN_MESSAGE)
