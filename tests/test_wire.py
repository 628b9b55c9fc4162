"""The wire codec (spec: wire-protocol.md): layouts, hex examples, fuzzing."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dhruva import wire
from dhruva.error import ProtocolError
from dhruva.storage import Record
from dhruva.utils import int8_to_str as p64

T = wire.MessageType
RECORD = Record(p64(0), b"v1", p64(1))
VECTORS = Path(__file__).resolve().parent.parent / "conformance" / "vectors" / "wire"

# The hex examples of spec/wire-protocol.md, message by message.
SPEC_EXAMPLES: list[tuple[wire.Message, str]] = [
    (wire.Hello(), "00 00 00 0b 01 44 48 52 56 00 01 00 00 00 00"),
    (
        wire.HelloOk(features="stage", storage_capabilities="pack"),
        "00 00 00 16 81 44 48 52 56 00 01 00 00 00 05 73 74 61 67 65 00 04 70 61 63 6b",
    ),
    (wire.NewOids(2), "00 00 00 05 02 00 00 00 02"),
    (
        wire.Oids([p64(0), p64(1)]),
        "00 00 00 15 82 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01",
    ),
    (wire.Load(p64(0)), "00 00 00 09 03 00 00 00 00 00 00 00 00"),
    (
        wire.RecordMessage(RECORD),
        "00 00 00 1b 83 00 00 00 00 00 00 00 00 00 00 00 02 00 00 00 08 76 31"
        " 00 00 00 00 00 00 00 01",
    ),
    (wire.BulkLoad([p64(0)]), "00 00 00 0d 04 00 00 00 01 00 00 00 00 00 00 00 00"),
    (wire.Empty(T.SYNC), "00 00 00 01 05"),
    (wire.Oids([]), "00 00 00 05 82 00 00 00 00"),
    (
        wire.Commit([RECORD]),
        "00 00 00 1f 07 00 00 00 01 00 00 00 00 00 00 00 00 00 00 00 02 00 00 00 08"
        " 76 31 00 00 00 00 00 00 00 01",
    ),
    (wire.Committed([p64(1)]), "00 00 00 0d 87 00 00 00 01 00 00 00 00 00 00 00 01"),
    (wire.Empty(T.PACK), "00 00 00 01 08"),
    (wire.Empty(T.OK), "00 00 00 01 88"),
    (wire.Empty(T.SIZE), "00 00 00 01 0b"),
    (wire.SizeIs(2), "00 00 00 09 8b 00 00 00 00 00 00 00 02"),
    (wire.ListOids(p64(0), 100), "00 00 00 0d 0c 00 00 00 00 00 00 00 00 00 00 00 64"),
    (wire.Empty(T.QUIT), "00 00 00 01 09"),
    (wire.Empty(T.STOP), "00 00 00 01 0a"),
    (
        wire.Error(18, "conflict", [p64(0)]),
        "00 00 00 19 ff 00 12 00 00 00 01 00 00 00 00 00 00 00 00 00 08 63 6f 6e 66 6c 69 63 74",
    ),
    # Authentication (secret "dhruva test secret", Ns = 00..1f, Nc = 20..3f).
    (
        wire.AuthChallenge("hmac-sha256", bytes(range(32))),
        "00 00 00 2e 8c 00 0b 68 6d 61 63 2d 73 68 61 32 35 36 00 01 02 03 04 05 06 07 08 09"
        " 0a 0b 0c 0d 0e 0f 10 11 12 13 14 15 16 17 18 19 1a 1b 1c 1d 1e 1f",
    ),
    (
        wire.Auth(
            "hmac-sha256",
            bytes(range(32, 64)),
            bytes.fromhex("93c3a7a2d80b7211ee56ab1b0145fc9a59ddd2727c80821ad3dcc7aa6f730893"),
        ),
        "00 00 00 4e 0d 00 0b 68 6d 61 63 2d 73 68 61 32 35 36 20 21 22 23 24 25 26 27 28 29"
        " 2a 2b 2c 2d 2e 2f 30 31 32 33 34 35 36 37 38 39 3a 3b 3c 3d 3e 3f 93 c3 a7 a2 d8 0b"
        " 72 11 ee 56 ab 1b 01 45 fc 9a 59 dd d2 72 7c 80 82 1a d3 dc c7 aa 6f 73 08 93",
    ),
    (
        wire.AuthOk(
            bytes.fromhex("b82ac126ff2000f836f5cc35dc5b54972eeac0b3fde9a4c522b2dd21816c8f1e")
        ),
        "00 00 00 2d 8d b8 2a c1 26 ff 20 00 f8 36 f5 cc 35 dc 5b 54 97 2e ea c0 b3 fd e9 a4"
        " c5 22 b2 dd 21 81 6c 8f 1e 44 48 52 56 00 01 00 00 00 00 00 00",
    ),
    (wire.Error(6, ""), "00 00 00 09 ff 00 06 00 00 00 00 00 00"),
    # Prefetch and pack progress.
    (
        wire.Hello(features="prefetch"),
        "00 00 00 13 01 44 48 52 56 00 01 00 00 00 08 70 72 65 66 65 74 63 68",
    ),
    (
        wire.RecordPrefetch(RECORD, [Record(p64(1), b"one", b"")]),
        "00 00 00 32 85 00 00 00 00 00 00 00 00 00 00 00 02 00 00 00 08 76 31"
        " 00 00 00 00 00 00 00 01 00 00 00 01 00 00 00 00 00 00 00 01 00 00 00 03"
        " 00 00 00 00 6f 6e 65",
    ),
    (
        wire.PackProgress(12, 34),
        "00 00 00 11 89 00 00 00 00 00 00 00 0c 00 00 00 00 00 00 00 22",
    ),
]


@pytest.mark.req("WIRE-010", "WIRE-014")
@pytest.mark.parametrize(("message", "hex_text"), SPEC_EXAMPLES, ids=lambda x: str(x)[:20])
def test_spec_hex_examples(message: wire.Message, hex_text: str) -> None:
    encoded = message.encode()
    assert encoded.hex(" ") == hex_text
    assert wire.FRAME_HEADER.unpack(encoded[:4])[0] == len(encoded) - 4
    decoded = wire.decode_message(encoded[4:])
    assert decoded.encode() == encoded


def test_stage_has_commit_layout() -> None:
    assert wire.Stage([RECORD]).encode()[5:] == wire.Commit([RECORD]).encode()[5:]


@pytest.mark.req("WIRE-010")
def test_decoder_reassembles_frames_fed_byte_by_byte() -> None:
    stream = b"".join(m.encode() for m, _ in SPEC_EXAMPLES)
    decoder = wire.FrameDecoder()
    payloads: list[bytes] = []
    for i in range(len(stream)):
        payloads.extend(decoder.feed(stream[i : i + 1]))
    assert [wire.decode_message(x).encode() for x in payloads] == [
        m.encode() for m, _ in SPEC_EXAMPLES
    ]
    assert decoder.buffered == 0


@pytest.mark.req("WIRE-011", "WIRE-012")
def test_oversized_length_refused_from_the_header_alone() -> None:
    decoder = wire.FrameDecoder()
    with pytest.raises(wire.FrameSizeError):
        decoder.feed(wire.FRAME_HEADER.pack(wire.MAX_FRAME_SIZE + 1))
    # The decoder stays broken: the stream cannot be resynchronized.
    with pytest.raises(ProtocolError):
        decoder.feed(b"\x00\x00\x00\x01\x05")
    assert wire.FrameDecoder().feed(wire.FRAME_HEADER.pack(wire.MAX_FRAME_SIZE)) == []


@pytest.mark.req("WIRE-012")
def test_zero_length_frame_is_malformed() -> None:
    with pytest.raises(ProtocolError) as info:
        wire.FrameDecoder().feed(b"\x00\x00\x00\x00")
    assert not isinstance(info.value, wire.FrameSizeError)


@pytest.mark.req("WIRE-011")
def test_encoder_refuses_oversized_payload() -> None:
    with pytest.raises(ProtocolError):
        wire.frame(b"\x07" * (wire.MAX_FRAME_SIZE + 1))


@pytest.mark.req("WIRE-013")
@pytest.mark.parametrize(
    "payload",
    [
        b"\x7e",  # unknown type
        b"\x03\x00\x00",  # LOAD with a short oid
        b"\x03" + b"\x00" * 9,  # LOAD with a trailing byte
        b"\x05\x00",  # SYNC with a body
        b"\x04\xff\xff\xff\xff",  # BULK_LOAD claiming 4 billion oids
        b"\x07\x00\x00\x00\x01" + b"\x00" * 8 + b"\x00\x00\x00\x05\x00\x00\x00\x00",  # short data
        b"\x01DHRV\x00\x01\x00\x00\x00\x02\xff\xfe",  # HELLO with non-UTF-8 features
        b"\x02\x00\x00\x00\x00",  # NEW_OIDS of 0
        # RECORD (the decoder's fast path): short header, short data, a
        # trailing byte, refs not a multiple of 8.
        b"\x83" + b"\x00" * 15,
        b"\x83" + p64(1) + b"\x00\x00\x00\x05\x00\x00\x00\x00" + b"abc",
        b"\x83" + p64(1) + b"\x00\x00\x00\x02\x00\x00\x00\x00" + b"abc",
        b"\x83" + p64(1) + b"\x00\x00\x00\x00\x00\x00\x00\x04" + b"abcd",
    ],
)
def test_malformed_payloads(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_message(payload)


@pytest.mark.req("WIRE-014")
def test_refs_not_a_multiple_of_eight() -> None:
    body = b"\x83" + p64(0) + b"\x00\x00\x00\x00\x00\x00\x00\x03" + b"abc"
    with pytest.raises(ProtocolError, match="multiple of 8"):
        wire.decode_message(body)


@pytest.mark.req("WIRE-041")
def test_new_oids_count_bounds() -> None:
    assert wire.decode_message(wire.NewOids(wire.MAX_OIDS_PER_REQUEST).encode()[4:])
    with pytest.raises(ProtocolError):
        wire.decode_message(wire.NewOids(wire.MAX_OIDS_PER_REQUEST + 1).encode()[4:])


@pytest.mark.req("WIRE-011", "WIRE-070")
def test_split_commit_keeps_frames_under_the_limit() -> None:
    records = [Record(p64(i), bytes([i]) * 100, b"") for i in range(10)]
    frames = wire.split_commit(records, max_frame_size=350)
    assert len(frames) > 2
    types = [wire.decode_message(f[4:]).type for f in frames]
    assert types[:-1] == [T.STAGE] * (len(frames) - 1) and types[-1] == T.COMMIT
    assert all(len(f) - 4 <= 350 for f in frames)
    got = [r for f in frames for r in wire.decode_message(f[4:]).records]  # type: ignore[union-attr]
    assert got == records
    with pytest.raises(ProtocolError, match="at most"):
        wire.split_commit([Record(p64(0), b"x" * 400, b"")], max_frame_size=350)


def test_empty_commit_is_one_frame() -> None:
    assert wire.split_commit([]) == [wire.Commit([]).encode()]


def test_error_codes_fatality() -> None:
    assert wire.ErrorCode.MALFORMED.fatal
    assert not wire.ErrorCode.WRITE_CONFLICT.fatal


# --- fuzzing -----------------------------------------------------------------------


@pytest.mark.req("WIRE-012", "WIRE-013")
@settings(max_examples=400, deadline=None)
@given(chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_decoder_raises_only_protocol_error(chunks: list[bytes]) -> None:
    decoder = wire.FrameDecoder(max_frame_size=256)
    try:
        for chunk in chunks:
            for payload in decoder.feed(chunk):
                try:
                    wire.decode_message(payload)
                except ProtocolError:
                    pass
    except ProtocolError:
        pass


def _decode_all(decoder: wire.FrameDecoder, chunks: list[bytes]) -> tuple[list[bytes], str]:
    payloads: list[bytes] = []
    try:
        for chunk in chunks:
            payloads.extend(decoder.feed(chunk))
    except ProtocolError as error:
        return payloads, type(error).__name__
    return payloads, ""


@pytest.mark.req("WIRE-010", "WIRE-012")
@settings(max_examples=400, deadline=None)
@given(
    payloads=st.lists(st.binary(min_size=1, max_size=40), max_size=6),
    tail=st.binary(max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_any_split_of_a_stream_gives_the_payloads_byte_by_byte_feeding_gives(
    payloads: list[bytes], tail: bytes, cuts: list[int]
) -> None:
    """A read of exactly one whole frame skips the buffer; the payloads and errors agree."""
    stream = b"".join(wire.FRAME_HEADER.pack(len(p)) + p for p in payloads) + tail
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    chunks = [stream[a:b] for a, b in itertools.pairwise(bounds)]
    # Whole frames as separate reads too, the case the shortcut takes.
    frames = [wire.FRAME_HEADER.pack(len(p)) + p for p in payloads]
    bytewise, error = _decode_all(wire.FrameDecoder(16), [bytes([b]) for b in stream])
    splits = [chunks, frames] if not tail else [chunks]
    for split in splits:
        found, found_error = _decode_all(wire.FrameDecoder(16), split)
        # The same error; a feed that raises returns none of the frames it
        # completed before the bad one, so a chunk may lose a few.
        assert found_error == error
        assert found == bytewise if not error else found == bytewise[: len(found)]


@pytest.mark.req("WIRE-013")
@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from([int(t) for t in T] + [0x00, 0x7E, 0xFE]),
    body=st.binary(max_size=80),
)
def test_fuzz_typed_payloads_raise_only_protocol_error(kind: int, body: bytes) -> None:
    try:
        message = wire.decode_message(bytes([kind]) + body)
    except ProtocolError:
        return
    # Whatever decodes re-encodes to the same bytes.
    assert message.encode()[4:] == bytes([kind]) + body


@settings(max_examples=100, deadline=None)
@given(
    records=st.lists(
        st.builds(
            Record,
            st.binary(min_size=8, max_size=8),
            st.binary(max_size=40),
            st.lists(st.binary(min_size=8, max_size=8), max_size=3).map(b"".join),
        ),
        max_size=5,
    )
)
def test_records_round_trip(records: list[Record]) -> None:
    encoded = wire.Records(records).encode()
    decoded = wire.decode_message(encoded[4:])
    assert isinstance(decoded, wire.Records)
    assert list(decoded.records) == records


@settings(max_examples=200)
@given(
    record=st.builds(
        Record,
        st.binary(min_size=8, max_size=8),
        st.binary(max_size=300),
        st.lists(st.binary(min_size=8, max_size=8), max_size=4).map(b"".join),
    )
)
def test_a_record_answer_is_its_frame_in_the_spec_layout(record: Record) -> None:
    """encode_record_message, the load's one-pass encoder, against frame(type + body)."""
    expected = wire.frame(bytes([wire.MessageType.RECORD]) + wire.record_body(record))
    assert wire.encode_record_message(record) == expected
    assert wire.RecordMessage(record).encode() == expected
    assert wire.decode_message(expected[4:]) == wire.RecordMessage(record)
    assert wire.LOAD_FRAME_HEAD + record.oid == wire.Load(record.oid).encode()


@pytest.mark.req("WIRE-011")
def test_a_record_answer_over_the_frame_limit_is_refused() -> None:
    big = Record(p64(1), b"\0" * (wire.MAX_FRAME_SIZE - 16), b"")  # 1 + 16 + data: one over
    with pytest.raises(ProtocolError):
        wire.encode_record_message(big)


# --- vectors -----------------------------------------------------------------------


def test_transcript_vectors_match_their_generator(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("wire_vectors", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0, "a transcript is stale: run generate.py"


@pytest.mark.req("WIRE-031", "WIRE-032")
def test_spec_proofs_are_the_hmacs_of_the_spec() -> None:
    """The proofs in the spec's example are HMAC-SHA256 with the spec's labels."""
    from dhruva.server import security

    secret, server_nonce, client_nonce = (
        b"dhruva test secret",
        bytes(range(32)),
        bytes(range(32, 64)),
    )
    auth = wire.decode_message(bytes.fromhex(dict(SPEC_EXAMPLES_BY_NAME)["AUTH"])[4:])
    auth_ok = wire.decode_message(bytes.fromhex(dict(SPEC_EXAMPLES_BY_NAME)["AUTH_OK"])[4:])
    assert isinstance(auth, wire.Auth) and isinstance(auth_ok, wire.AuthOk)
    assert auth.proof == security.client_proof(secret, server_nonce, client_nonce)
    assert auth_ok.server_proof == security.server_proof(secret, server_nonce, client_nonce)
    assert security.CLIENT_LABEL == b"dhruva-auth-v1 client\x00"
    assert len(security.CLIENT_LABEL) == len(security.SERVER_LABEL) == 22
    assert not security.proofs_equal(auth.proof, auth_ok.server_proof)


SPEC_EXAMPLES_BY_NAME = [(m.type.name, h.replace(" ", "")) for m, h in SPEC_EXAMPLES]


@pytest.mark.req("WIRE-013")
@pytest.mark.parametrize(
    "payload",
    [
        b"\x8c\x00\x0bhmac-sha256" + b"\x00" * 31,  # AUTH_CHALLENGE with a short nonce
        b"\x0d\x00\x0bhmac-sha256" + b"\x00" * 63,  # AUTH with a short proof
        b"\x0d\x00\x0bhmac-sha256" + b"\x00" * 65,  # AUTH with a trailing byte
        b"\x8d" + b"\x00" * 31,  # AUTH_OK shorter than its proof
    ],
)
def test_malformed_auth_messages(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        wire.decode_message(payload)
