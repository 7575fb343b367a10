"""The access log: one record per response from the exchange (status, bytes, duration, the
PROXY header's client, TLS version and SNI), its three formats, the writer that never blocks
the loop (lines dropped and counted when it falls behind), and ``--access-log`` for real."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import socket
import threading

import pytest
from memlink import MemLink
from netkit import wait_for
from servekit import served

from spcore.cli_access import AccessLog
from spcore.http.access import FORMATS, AccessRecord, common
from spcore.http.messages import Pipe, Response
from spcore.http.protocol import HTTPProtocol
from spcore.server import Listener, Server
from spcore.tls import ClientTLS, ServerTLS

RECORD = AccessRecord(
    method="GET",
    target='/a"b\x1bc',
    http_version="1.1",
    status=200,
    bytes=5,
    time=1_700_000_000.25,
    duration=0.125,
    peer=("203.0.113.7", 4242),
    tls_version="TLSv1.3",
    sni="localhost",
    referer="https://example.test/",
    user_agent="curl/8",
)


# -- formats ------------------------------------------------------------------------------------


def test_common_is_the_ncsa_format_in_utc_with_quotes_and_controls_escaped() -> None:
    assert FORMATS["common"](RECORD) == (
        '203.0.113.7 - - [14/Nov/2023:22:13:20 +0000] "GET /a\\x22b\\x1Bc HTTP/1.1" 200 5'
    )


def test_combined_adds_the_referer_and_the_user_agent() -> None:
    line = FORMATS["combined"](RECORD)
    assert line == common(RECORD) + ' "https://example.test/" "curl/8"'
    bare = AccessRecord(**{**_fields(RECORD), "referer": None, "user_agent": None, "bytes": 0})
    assert FORMATS["combined"](bare).endswith(' 200 - "-" "-"')


def test_json_has_every_field_the_issue_names() -> None:
    fields = json.loads(FORMATS["json"](RECORD))
    assert fields["method"] == "GET" and fields["target"] == '/a"b\x1bc'
    assert (fields["status"], fields["bytes"], fields["duration"]) == (200, 5, 0.125)
    assert fields["peer"] == "203.0.113.7:4242"
    assert (fields["tls_version"], fields["sni"]) == ("TLSv1.3", "localhost")
    v6 = AccessRecord(**{**_fields(RECORD), "peer": ("::1", 5)})
    assert json.loads(FORMATS["json"](v6))["peer"] == "[::1]:5"


def _fields(record: AccessRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in record.__slots__}


# -- the records the exchange makes ------------------------------------------------------------


def _server(
    app: object,
    records: list[AccessRecord],
    *,
    tls: ServerTLS | None = None,
    proxy: bool = False,
    http: str = "auto",
) -> Server:
    listener = Listener(
        lambda: HTTPProtocol(app, http=http, access_log=records.append),  # type: ignore[arg-type]
        tls=tls,
        proxy_protocol=proxy,
    )
    server = Server([listener])
    server.start(1000.0, 1_700_000_000.0)
    return server


def test_one_record_per_response_with_status_bytes_and_the_proxy_headers_client(
    http_codec: str,
) -> None:
    records: list[AccessRecord] = []
    server = _server(lambda r: Response(404, [], b"nope"), records, proxy=True, http=http_codec)
    link = MemLink(server)
    link.send(
        b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n"
        b"GET /x?y HTTP/1.1\r\nHost: t\r\nUser-Agent: ua/1\r\n\r\n"
        b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    assert [(r.method, r.target, r.status, r.bytes) for r in records] == [
        ("GET", "/x?y", 404, 4),
        ("HEAD", "/h", 404, 0),
    ]
    assert records[0].peer == ("203.0.113.7", 4242) and records[0].user_agent == "ua/1"
    assert records[0].time == 1_700_000_000.0 and records[0].complete
    assert server.stats.responses[4] == 2


def test_a_refused_request_and_a_timeout_are_logged_too(http_codec: str) -> None:
    records: list[AccessRecord] = []
    server = _server(lambda r: Response(200, [], b""), records, http=http_codec)
    slow = MemLink(server)
    slow.send(b"GET / HTTP/1.1\r\nHost")  # a head that never ends
    slow.advance(server.limits.header_timeout + 1)
    bad = MemLink(server)
    bad.send(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n")
    assert [(r.method, r.status) for r in records] == [("-", 408), ("-", 400)]
    assert all(r.bytes > 0 and r.complete for r in records)
    assert server.stats.timeouts_by_kind == {"header": 1}
    assert server.stats.responses[4] == 2


def test_the_duration_runs_from_the_head_to_the_end_of_a_streamed_body_over_tls(
    server_tls: ServerTLS, client_tls: ClientTLS
) -> None:
    records: list[AccessRecord] = []
    pipe = Pipe()
    head = [("content-length", "5")]
    server = _server(lambda r: Response(200, head, pipe), records, tls=server_tls)
    link = MemLink(server, client=client_tls, server_hostname="localhost")
    link.send(b"GET /s HTTP/1.1\r\nHost: localhost\r\n\r\n")
    pipe.write(b"ab")
    link.advance(0.25)
    pipe.write(b"cde")
    pipe.close()
    link.pump()
    assert len(records) == 1
    record = records[0]
    assert (record.status, record.bytes, record.duration) == (200, 5, 0.25)
    assert record.tls_version is not None and record.tls_version.startswith("TLSv1.")
    assert record.sni == "localhost"


def test_a_response_cut_short_is_logged_as_incomplete(http_codec: str) -> None:
    records: list[AccessRecord] = []
    pipe = Pipe()
    server = _server(lambda r: Response(200, [], pipe), records, http=http_codec)
    link = MemLink(server)
    link.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    pipe.write(b"ab")
    link.pump()
    assert not records
    link.conn.abort("connection reset by peer")  # before the body's end
    link.pump()
    assert [(r.status, r.bytes, r.complete) for r in records] == [(200, 2, False)]


# -- the writer ---------------------------------------------------------------------------------


def test_a_writer_that_falls_behind_drops_and_counts_lines_never_blocks(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    entered, release = threading.Event(), threading.Event()

    def stalling(record: AccessRecord) -> str:
        if record.target == "/first":
            entered.set()
            assert release.wait(10)
        return common(record)

    path = tmp_path / "access.log"
    sink = AccessLog(str(path), stalling, capacity=4)
    first = AccessRecord(**{**_fields(RECORD), "target": "/first"})
    sink(first)
    assert entered.wait(10)  # the writer is stuck formatting the first record
    for _ in range(4 + 3):
        sink(RECORD)  # returns at once: 4 queued, 3 dropped
    assert sink.dropped == 3
    release.set()
    with caplog.at_level(logging.WARNING, "spcore.access"):
        sink.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 4 and "/first" in lines[0]
    assert any("3 line(s) dropped" in r.getMessage() for r in caplog.records)


def test_reopen_writes_to_a_new_file_after_a_rotation(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "access.log"
    sink = AccessLog(str(path), common)
    sink(RECORD)
    wait_for(lambda: path.exists() and path.read_text(), "the first line", 10)
    os.rename(path, tmp_path / "access.log.1")
    sink.reopen()
    sink(RECORD)
    sink.close()
    assert len(path.read_text().splitlines()) == 1
    assert len((tmp_path / "access.log.1").read_text().splitlines()) == 1


# -- --access-log -------------------------------------------------------------------------------

LINES = {
    "common": re.compile(r'^127\.0\.0\.1 - - \[[^]]+ \+0000\] "GET /hello HTTP/1\.1" 200 \d+$'),
    "combined": re.compile(r'^127\.0\.0\.1 - - \[.*\] "GET /hello HTTP/1\.1" 200 \d+ "-" "t/1"$'),
}


@pytest.mark.parametrize("form", ["common", "combined", "json"])
def test_access_log_writes_one_line_per_response_in_each_format(
    form: str, tmp_path: pathlib.Path, env: dict[str, str]
) -> None:
    path = tmp_path / "access.log"
    args = ["--port", "0", "--no-tls", "--access-log", str(path), "--access-log-format", form]
    with served(args, env) as server:
        endpoint = server.endpoint("http")
        with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nUser-Agent: t/1\r\n\r\n" * 2)
            wait_for(lambda: path.exists() and len(path.read_text().splitlines()) == 2, "2", 20)
        assert server.stop() == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        if form == "json":
            fields = json.loads(line)
            assert (fields["method"], fields["target"], fields["status"]) == ("GET", "/hello", 200)
            assert fields["peer"].startswith("127.0.0.1:") and fields["tls_version"] is None
        else:
            assert LINES[form].match(line), line


def test_access_log_dash_is_standard_output_and_off_by_default(env: dict[str, str]) -> None:
    for args, expected in ((["--access-log"], 1), ([], 0)):
        with served(["--port", "0", "--no-tls", *args], env) as server:
            endpoint = server.endpoint("http")
            with socket.create_connection((endpoint.host, endpoint.port), timeout=10) as sock:
                sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                while sock.recv(65536):
                    pass
            assert server.stop() == 0
            assert server.proc.stdout is not None
            rest = server.proc.stdout.read().decode().splitlines()
        assert len([line for line in rest if '"GET /hello HTTP/1.1" 200' in line]) == expected
