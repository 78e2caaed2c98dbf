"""Garbage to every RPC of every service, on a real 3-node cluster (issue 10, items 9-10).

The RPCs are enumerated from the proto service descriptors (KV, Admin,
RaftTransport): a method added to a .proto is covered here without a change.
Each is sent, raw over gRPC (no client library between), requests drawn by
hypothesis from:

  raw        arbitrary bytes;
  structured a message of the method's type built from its descriptor, every
             field drawn across and beyond its range: huge strings and bytes,
             numbers at 0, 2^31, 2^32, 2^63, 2^64-1 and negative, unknown
             enum values, nested messages;
  utf8       such a message with a string field (at any depth) holding bytes
             that are not UTF-8;
  truncated  such a message cut short;
  raft       for RaftTransport, batches from the wrong sender, to the wrong
             node, for unknown groups, with codec-encoded Raft messages whose
             terms and indexes are out of range or whose shape no correct
             peer sends.

The cluster is secure, as every cluster is: KV and Admin garbage comes with
the harness's ops token (every role), RaftTransport garbage with a node
certificate (the batch's own sender's when it names one of the nodes), so
the garbage gets past authentication and reaches the parsers and guards; a
sender its certificate does not name is refused, as it must be.

After each request: its status is precise (never UNKNOWN or INTERNAL, and
never the client's own deadline: the node answers, it does not hang), every
node is up, the data is unchanged (unless the request was a well-formed
write that succeeded), and every partition has a leader.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client import Client
from consensus.codec import encode_message
from consensus.types import ConfState, Entry, Message, MessageType, Snapshot, SnapshotMeta
from proto.medkv.v1 import admin_pb2, admin_pb2_grpc, kv_pb2, raft_pb2
from tests.cluster.harness import LocalCluster, start_cluster, stop_cluster

pytestmark = [pytest.mark.cluster]

PARTITIONS = 4
SERVICES = [
    kv_pb2.DESCRIPTOR.services_by_name["KV"],
    admin_pb2.DESCRIPTOR.services_by_name["Admin"],
    raft_pb2.DESCRIPTOR.services_by_name["RaftTransport"],
]
METHODS: dict[str, MethodDescriptor] = {
    f"{s.name}.{m.name}": m for s in SERVICES for m in s.methods
}
# Requests that, well-formed, legitimately change the data.
WRITES = {"KV.Put", "KV.CompareAndSet", "KV.Delete", "KV.Batch", "KV.BatchCommands",
          "Admin.ErasePatient"}
NOT_PRECISE = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
TIMEOUT_S = 20.0
_N = max(8, settings.default.max_examples // 4)

TWO63 = 1 << 63
TWO64 = 1 << 64
_EDGES = [0, 1, 2, 7, 255, 256, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
          TWO63 - 1, TWO63, TWO64 - 1]
_RANGES = {
    FieldDescriptor.CPPTYPE_INT32: (-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.CPPTYPE_INT64: (-TWO63, TWO63 - 1),
    FieldDescriptor.CPPTYPE_UINT32: (0, (1 << 32) - 1),
    FieldDescriptor.CPPTYPE_UINT64: (0, TWO64 - 1),
}


# ---- drawing requests from descriptors -------------------------------------------------

def _ints(cpp_type: int) -> st.SearchStrategy[int]:
    lo, hi = _RANGES[cpp_type]
    edges = sorted({min(hi, max(lo, v)) for e in _EDGES for v in (e, -e)})
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi))


_strings = st.one_of(
    st.just(""),
    st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), min_size=1, max_size=4),
    st.sampled_from([257, 4097, 70_000]).map(lambda n: "é" * n),
    st.sampled_from(["p-1", "vitals", "../../etc/passwd", "\ud7ff", "a\u0000b"]),
)
_bytes = st.one_of(
    st.binary(max_size=24),
    st.just(b"\x07" * 16),  # a well-formed client id
    st.sampled_from([(1 << 20) + 1, 3 << 20]).map(lambda n: b"x" * n),
)


def _field_value(fd: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    t = fd.cpp_type
    if t in _RANGES:
        return _ints(t)
    if t == FieldDescriptor.CPPTYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.CPPTYPE_ENUM:
        return st.integers(-3, 12)  # open enums: unknown values travel
    if t in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return st.one_of(st.floats(allow_nan=True), st.sampled_from([0.0, -1.0, 1e308]))
    if t == FieldDescriptor.CPPTYPE_STRING:
        return _bytes if fd.type == FieldDescriptor.TYPE_BYTES else _strings
    assert t == FieldDescriptor.CPPTYPE_MESSAGE
    return messages(fd.message_type, depth + 1)


@st.composite
def _message(draw: st.DrawFn, desc: Descriptor, depth: int) -> Any:
    msg = message_factory.GetMessageClass(desc)()
    if depth > 3:
        return msg
    for fd in desc.fields:
        if not draw(st.booleans()):
            continue
        is_repeated = fd.is_repeated
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            continue  # no map fields in medkv's protos today
        if fd.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            if is_repeated:
                for sub in draw(st.lists(messages(fd.message_type, depth + 1), max_size=2)):
                    getattr(msg, fd.name).add().CopyFrom(sub)
            else:
                getattr(msg, fd.name).CopyFrom(draw(messages(fd.message_type, depth + 1)))
        elif is_repeated:
            getattr(msg, fd.name).extend(draw(st.lists(_field_value(fd, depth), max_size=3)))
        else:
            setattr(msg, fd.name, draw(_field_value(fd, depth)))
    return msg


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    return _message(desc, depth)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _string_paths(desc: Descriptor, depth: int = 0) -> list[list[FieldDescriptor]]:
    """Every path (through singular/repeated message fields) to a string field."""
    out: list[list[FieldDescriptor]] = []
    for fd in desc.fields:
        if fd.type == FieldDescriptor.TYPE_STRING:
            out.append([fd])
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and depth < 3:
            out += [[fd, *rest] for rest in _string_paths(fd.message_type, depth + 1)]
    return out


def _bad_utf8(path: list[FieldDescriptor], junk: bytes) -> bytes:
    """The wire encoding of a message whose string at `path` holds `junk`
    (appending it to a valid encoding: the parser merges it in)."""
    inner = junk
    for fd in reversed(path):
        inner = _varint(fd.number << 3 | 2) + _varint(len(inner)) + inner
    return inner


_NOT_UTF8 = st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xfe\xfe", b"\xf8\x88\x80\x80\x80"])


@st.composite
def raft_messages(draw: st.DrawFn) -> bytes:
    """A codec-encoded Raft message no correct peer sends: terms or indexes out
    of range, a forged sender, a bad shape. (Plausible messages from a peer
    that may speak Raft are not garbage; node.raft_guard's own tests cover them.)"""
    t = draw(st.sampled_from(list(MessageType)))
    absurd = st.sampled_from([1 << 33, TWO63 - 1, TWO63, TWO64 - 1])
    term = draw(st.one_of(st.just(0), absurd))
    m = Message(
        type=t,
        to=draw(st.sampled_from([0, 1, 2, 3, 9])),
        frm=draw(st.sampled_from([0, 1, 2, 3, 9])),
        term=term,
        log_term=draw(st.one_of(st.integers(0, 3), absurd)),
        index=draw(st.one_of(st.integers(0, 5), absurd)),
        commit=draw(st.one_of(st.integers(0, 5), absurd)),
        entries=draw(st.sampled_from([
            [], [Entry(0, 0, b"junk")], [Entry(9, 1, b"x"), Entry(7, 1, b"y")],
            [Entry(k, 0, b"") for k in range(70_000)],
        ])),
        snapshot=draw(st.sampled_from([
            None, Snapshot(SnapshotMeta(TWO64 - 1, 1, ConfState(voters=(1, 2, 99))), b"")
        ])),
        context=draw(st.sampled_from([b"", b"c" * 65])),
    )
    if term == 0 and t in (MessageType.PROP, MessageType.READ_INDEX) and m.entries[:1] == [
        Entry(0, 0, b"junk")
    ]:
        # A well-formed forwarded proposal of junk would be applied (as a
        # refused command, changing nothing); make it wrong-sender instead.
        m.frm = 9
    return encode_message(m)


@st.composite
def raft_batches(draw: st.DrawFn) -> raft_pb2.RaftBatch:
    nodes = st.sampled_from([0, 1, 2, 3, 4, 99, TWO64 - 1])
    groups = st.sampled_from([0, 1, PARTITIONS - 1, PARTITIONS, (1 << 32) - 1])
    batch = raft_pb2.RaftBatch(from_node=draw(nodes), to_node=draw(nodes))
    for _ in range(draw(st.integers(0, 2))):
        batch.heartbeats.add(
            group=draw(groups),
            term=draw(st.sampled_from([0, 1 << 33, TWO63, TWO64 - 1])),
            commit=draw(st.sampled_from([0, 5, TWO64 - 1])),
            context=draw(st.sampled_from([b"", b"c" * 65])),
            response=draw(st.booleans()), reject=draw(st.booleans()),
        )
    for _ in range(draw(st.integers(0 if batch.heartbeats else 1, 2))):
        batch.messages.add(
            group=draw(groups),
            message=draw(st.one_of(raft_messages(), st.binary(max_size=40))),
        )
    return batch


@st.composite
def snapshot_chunks(draw: st.DrawFn) -> raft_pb2.SnapshotChunk:
    header = draw(st.one_of(st.binary(max_size=20), raft_messages()))
    return raft_pb2.SnapshotChunk(
        from_node=draw(st.sampled_from([0, 1, 2, 3, 99])),
        to_node=draw(st.sampled_from([0, 1, 2, 3, 99])),
        group=draw(st.sampled_from([0, 1, PARTITIONS, (1 << 32) - 1])),
        header=header, offset=draw(st.sampled_from([0, 1, TWO64 - 1])),
        data=draw(st.binary(max_size=30)), last=draw(st.booleans()),
        total_size=draw(st.sampled_from([0, 30, TWO64 - 1])),
    )


def requests(name: str, method: MethodDescriptor) -> st.SearchStrategy[bytes]:
    """Serialized request messages (bytes) of the method's input type."""
    desc = method.input_type
    structured = messages(desc).map(lambda m: m.SerializeToString())
    options: list[st.SearchStrategy[bytes]] = [
        st.binary(max_size=64),
        structured,
        structured.flatmap(
            lambda raw: st.integers(0, max(0, len(raw) - 1)).map(lambda k: raw[:k] + b"\xff")
        ),
    ]
    paths = _string_paths(desc)
    if paths:
        options.append(
            st.tuples(structured, st.sampled_from(paths), _NOT_UTF8).map(
                lambda t: t[0] + _bad_utf8(t[1], t[2])
            )
        )
    if name == "RaftTransport.Stream":
        options.append(raft_batches().map(lambda b: b.SerializeToString()))
    if name == "RaftTransport.Snapshot":
        options.append(snapshot_chunks().map(lambda c: c.SerializeToString()))
    return st.one_of(options)


# ---- the cluster and what must hold after every request ------------------------------

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    c = start_cluster(tmp_path_factory.mktemp("garbage"), partitions=PARTITIONS)
    try:
        with Client(c.addresses, timeout=20.0) as kv:
            for i in range(8):
                kv.put(f"garbage-{i}", "vitals", b"bp=%d" % i)
        yield c
    finally:
        stop_cluster(c)


Channels = Callable[[int, "int | None"], grpc.Channel]


@pytest.fixture(scope="module")
def channels(cluster: LocalCluster) -> Iterator[Channels]:
    """(node index, as_node) -> a channel to that node: the ops token, or node
    as_node's certificate (made once, kept for the module)."""
    opts = [("grpc.max_send_message_length", 16 << 20),
            ("grpc.max_receive_message_length", 16 << 20)]
    chans: dict[tuple[int, int | None], grpc.Channel] = {}

    def get(node: int, as_node: int | None) -> grpc.Channel:
        if (node, as_node) not in chans:
            chans[node, as_node] = cluster.channel(cluster.addresses[node], opts, as_node=as_node)
        return chans[node, as_node]

    yield get
    for ch in chans.values():
        ch.close()


def _sender(name: str, raw: bytes, node: int) -> int | None:
    """The node certificate a RaftTransport request is sent with: its own
    from_node's when that is one of the cluster's nodes, else another node's
    (which must refuse to speak for it); None (the ops token) for KV and Admin."""
    if not name.startswith("RaftTransport."):
        return None
    cls = raft_pb2.SnapshotChunk if name == "RaftTransport.Snapshot" else raft_pb2.RaftBatch
    try:
        frm = cls.FromString(raw).from_node
    except DecodeError:
        frm = 0
    return frm if frm in (1, 2, 3) else 1 + (node + 1) % 3


def _data(kv: Client) -> list[tuple[str, str, int, bytes]]:
    return sorted(
        (r.patient_id, r.record_id, r.version, r.value)
        for r in kv.scan(consistency="linearizable")
    )


def _call(channel: grpc.Channel, name: str, method: MethodDescriptor, raw: bytes) -> tuple[
    grpc.StatusCode, str, list[Any]
]:
    """Send raw request bytes; the final status, its details and the replies."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    resp_cls = message_factory.GetMessageClass(method.output_type)
    ident: Callable[[bytes], bytes] = lambda b: b  # noqa: E731 - already serialized
    kw: dict[str, Any] = {"request_serializer": ident, "response_deserializer": resp_cls.FromString}
    many = iter([raw, raw]) if name == "RaftTransport.Snapshot" else iter([raw])
    try:
        if method.client_streaming and method.server_streaming:
            replies = list(channel.stream_stream(path, **kw)(many, timeout=TIMEOUT_S))
        elif method.client_streaming:
            replies = [channel.stream_unary(path, **kw)(many, timeout=TIMEOUT_S)]
        elif method.server_streaming:
            replies = list(channel.unary_stream(path, **kw)(raw, timeout=TIMEOUT_S))
        else:
            replies = [channel.unary_unary(path, **kw)(raw, timeout=TIMEOUT_S)]
    except grpc.RpcError as e:
        return e.code(), e.details() or "", []
    return grpc.StatusCode.OK, "", replies


def _every_node_up_and_every_partition_led(cluster: LocalCluster) -> None:
    deadline = time.monotonic() + 30
    while True:
        missing: list[str] = []
        for nid, address in enumerate(cluster.addresses, 1):
            try:
                with cluster.channel(address) as ch:
                    st_ = admin_pb2_grpc.AdminStub(ch).ClusterStatus(
                        admin_pb2.ClusterStatusRequest(local_only=True), timeout=5
                    )
            except grpc.RpcError as e:
                missing.append(f"node {nid} down ({e.code().name})")
                continue
            missing += [f"node {nid} sees no leader of partition {p.partition}"
                        for p in st_.partition_info if not p.leader]
        if not missing:
            return
        assert time.monotonic() < deadline, missing
        time.sleep(0.2)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_garbage_gets_a_precise_status_and_changes_nothing(
    cluster: LocalCluster, channels: Channels, name: str
) -> None:
    method = METHODS[name]
    statuses: set[str] = set()

    with Client(cluster.addresses, timeout=20.0) as kv:

        @settings(max_examples=_N, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        @given(raw=requests(name, method), node=st.integers(0, 2))
        def one(raw: bytes, node: int) -> None:
            before = _data(kv)
            started = time.monotonic()
            code, details, replies = _call(
                channels(node, _sender(name, raw, node)), name, method, raw
            )
            took = time.monotonic() - started
            statuses.add(code.name)
            assert code not in NOT_PRECISE, (name, code, details)
            assert not (code == grpc.StatusCode.DEADLINE_EXCEEDED and took >= TIMEOUT_S - 0.5), (
                f"{name}: the node never answered within {TIMEOUT_S}s"
            )
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                assert details, f"{name}: INVALID_ARGUMENT without a message"
            for reply in replies:  # BatchCommands: each multiplexed status too
                for r in getattr(reply, "responses", ()):
                    assert r.status.code not in (2, 13), (name, r.status)
            _every_node_up_and_every_partition_led(cluster)
            if not (name in WRITES and code == grpc.StatusCode.OK):
                assert _data(kv) == before, f"{name} changed the data ({code.name})"

        one()
    print(f"\n{name}: {sorted(statuses)}")  # pytest -s: what the garbage reached
    assert statuses  # the property ran


def test_the_methods_come_from_the_descriptors() -> None:
    """Guards the enumeration itself: every service of the three protos, with
    each of its methods, is in METHODS (so a new RPC is garbage-tested)."""
    for module in (kv_pb2, admin_pb2, raft_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for m in service.methods:
                assert f"{service.name}.{m.name}" in METHODS
    assert len(METHODS) >= 18
