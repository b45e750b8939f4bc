#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into fuzz/corpus/<target>/seed-*.

The seeds that need the gateway's own code (a sealed bundle, a WireGuard handshake) are written
by `cargo test -p kakehashi-gateway --lib fuzzing::tests::write_seeds -- --ignored`.
Run from the repository root; `cargo fuzz cmin` then keeps what adds coverage.
"""
import base64, os, re, struct, subprocess, tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpus")

def put(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

H1 = {
    "get": b"GET /api01rv2/patientgetv2?id=1&format=json HTTP/1.1\r\nHost: engine\r\nAuthorization: Basic dTpw\r\n\r\n",
    "post-length": b"POST /orca11/acceptmodv2?class=01 HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\nContent-Length: 5\r\n\r\nhello",
    "chunked": b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
    "chunked-quoted-ext": b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=\"q\\\"s\";b\r\nhello\r\n0\r\n\r\n",
    "pipelined": b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcPOST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHEAD /e HTTP/1.1\r\nHost: x\r\n\r\nGET /f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\nHost: x\r\n\r\n",
    "upgrade": b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n\x81\x05hello",
    "expect": b"POST /orca14/appointmodv2?class=01 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n{}",
    "absolute": b"GET http://engine/api01rv2/x?y=1 HTTP/1.1\r\nHost: engine\r\n\r\n",
    "http10": b"GET / HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\n\r\n",
    "lengths": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7, 7\r\n\r\n1234567",
    "smuggle": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\n\r\n",
    "fragment": b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n",
}
for name, data in H1.items():
    put("h1", name, bytes([7]) + data)
    put("h1_differential", name, data)

# What the engine sends the uplink client: first byte = read size (low 5 bits), HEAD (0x20),
# upgrade asked (0x40).
ANSWERS = {
    "length": (7, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    "chunked": (3, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;x=\"y\"\r\nWiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"),
    "interim": (5, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
    "close": (9, b"HTTP/1.1 200 OK\r\n\r\nuntil the connection closes"),
    "head": (0x20 | 4, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n"),
    "upgrade": (0x40 | 6, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"),
    "http10": (2, b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\n\r\n"),
    "both": (1, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"),
    "lengths": (8, b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabcHTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"),
}
for name, (first, data) in ANSWERS.items():
    put("h1_answer", name, bytes([first]) + data)

put("engine_body", "json", '/api01rv2/patientgetv2?id=1&format=json\n{"patientinforeq":{"Request_Number":"01","Patient_ID":"1"}}')
put("engine_body", "xml", '/orca11/acceptmodv2?class=01\n<data><acceptreq type="record"><Request_Number type="string">01</Request_Number><Patient_ID type="string">1</Patient_ID><List type="array"><List_child type="record"><Id type="string">a &amp; b &#x41;</Id></List_child></List></acceptreq></data>')
put("engine_body", "xml-decl", '/api/api21/medicalmodv2?class=01\n<?xml version="1.0" encoding="UTF-8"?>\n<data><medicalreq type="record"><![CDATA[x]]></medicalreq></data>')
put("engine_body", "answer", '/api01rv2/systeminfv2?format=json\n{"systeminfres":{"Api_Result":"00","Api_Result_Message":"ok"}}')
put("engine_body", "empty", '/orca12/patientmodv2?class=01\n')

# A CSR from openssl, in the forms EST and cert-tool take.
with tempfile.TemporaryDirectory() as t:
    key, req = os.path.join(t, "k"), os.path.join(t, "r")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-subj", "/CN=reception-2", "-keyout", key, "-out", req],
                   check=True, capture_output=True)
    pem = open(req, "rb").read()
    der = subprocess.run(["openssl", "req", "-in", req, "-outform", "DER"], check=True, capture_output=True).stdout
put("csr", "pem", pem)
put("csr", "der", der)
put("est_body", "base64", base64.encodebytes(der))
put("est_body", "pem", pem)

def toml_blocks(path):
    return re.findall(r"```toml\n(.*?)```", open(path).read(), re.S)
docs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs")
for i, block in enumerate(toml_blocks(os.path.join(docs, "configuration.md"))):
    put("gateway_toml", f"doc-{i}", block)
put("gateway_toml", "minimal", '''data_dir = "data"

[tls]
cert = "server.pem"
key = "server.key"
client_ca = "ca.pem"

[[listener]]
address = "127.0.0.1:8443"

[upstream]
url = "https://engine.example.test"
ca = "ca.pem"
cert = "uplink.pem"
key = "uplink.key"
user = "ormaster"
password_file = "upstream.password"
''')
for i, block in enumerate(toml_blocks(os.path.join(docs, "engine-sim.md"))):
    put("engine_toml", f"doc-{i}", block)

put("bundle_opened", "payload", '''{"format":1,"clinic":"c1","clinic_name":"Clinic","version":1,"created":"2026-11-22T00:00:00Z",
"appliance":"$APPLIANCE","vendor_key":"$VENDOR",
"certificates":{"vendor_root":"R","clinic_ca":"C","clinic_crl":"L","issuing_ca":"I","server":"S","uplink":null},
"settings":{"engine_host":"engine.test","listen":"0.0.0.0:443","est_listen":"0.0.0.0:8444","admin_listen":"127.0.0.1:9090",
 "wireguard":{"listen":"0.0.0.0:51820","address":"10.77.0.1/24","endpoint":"clinic.example:51820"}},
"engine":{"url":"https://engine.test","ca":"E","user":"ormaster","password":"pw"},
"terminals":[{"name":"t1","note":null,"enabled":true,"wireguard":{"public_key":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","preshared_key":null,"address":"10.77.0.2"},"scopes":["reference"]}],
"tokens":[{"name":"t2","sha256":"00","created":"2026-11-22T00:00:00Z","expires":"2026-11-23T00:00:00Z"}],
"users":[{"id":"u1","hash":"$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA","locked":false,"upstream":{"user":"a","password":"b"},"scopes":["write"]}],
"revoked":["t0"]}''')
put("bundle_sealed", "plain", "kakehashi-bundle/1 age1xyz\nage-encryption.org/v1\n-> X25519 AAAA\nAAAA\n--- AAAA\n")

# records: a cache row (status, content type, body, stored, …) then a journal row.
def integer(v): return b"\x01" + struct.pack("<q", v)
def text(s): return b"\x03" + bytes([len(s)]) + s
def blob(s): return b"\x04" + bytes([len(s)]) + s
null = b"\x00"
cache = text(b"/api01rv2/x") + integer(200) + text(b"application/json") + blob(b"{}") + integer(0) + integer(2**62)
journal = integer(1) + integer(0) + text(b"t") + text(b"u") + text(b"POST") + text(b"/orca11/acceptmodv2") + \
    text(b"application/json") + blob(b"{}") + text(b"k") + text(b"pending") + integer(0) + null + null + null + null + integer(0)
put("records", "rows", cache + journal)
put("records", "extremes", integer(-2**63) * 6 + integer(-2**63) * 16)
# ... then an audit batch row (last id, count, last hash, the entries: gateway/src/audit/batch.rs).
def varint(n):
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7f | 0x80]); n >>= 7
    return out + bytes([n])
def zigzag(n): return ((n << 1) ^ (n >> 63)) & (2**64 - 1)
def batch_text(s): return varint(len(s)) + s
def batch_opt(s): return b"\0" if s is None else varint(len(s) + 1) + s
entry_hash = b"\x11" * 32
batch_entry = b"".join(batch_text(s) for s in [b"2026-12-06T07:00:00.000Z", b"allow", b"ok"]) + \
    batch_opt(b"reception-1") + batch_opt(None) + batch_text(b"127.0.0.1:50000") + batch_text(b"api") + \
    batch_opt(b"GET") + batch_opt(b"/api01rv2/patientgetv2?id=1") + batch_opt(b"cloud") + \
    varint(zigzag(200) + 1) + varint(zigzag(0)) + varint(zigzag(281)) + varint(zigzag(3)) + entry_hash
put("records", "audit-batch", cache + journal + integer(1) + integer(1) + blob(entry_hash) + blob(batch_entry))

# wireguard, mode 1: IPv4 packets for the gateway's tunnel address, length-prefixed.
def checksum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff
def ipv4(proto, payload, src=(10, 77, 0, 2), dst=(10, 77, 0, 1)):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, bytes(src), bytes(dst))
    h = h[:10] + struct.pack("!H", checksum(h)) + h[12:]
    return h + payload
def tcp(sport, dport, seq, ack, flags, data=b"", src=(10, 77, 0, 2), dst=(10, 77, 0, 1)):
    t = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + data
    pseudo = bytes(src) + bytes(dst) + struct.pack("!BBH", 0, 6, len(t))
    t = t[:16] + struct.pack("!H", checksum(pseudo + t)) + t[18:]
    return ipv4(6, t, src, dst)
def icmp_echo():
    m = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"
    m = m[:2] + struct.pack("!H", checksum(m)) + m[4:]
    return ipv4(1, m)
def frames(*ps): return b"".join(struct.pack("!H", len(p)) + p for p in ps)
put("wireguard", "syn", b"\x01" + frames(tcp(40000, 8000, 1000, 0, 0x02)))
put("wireguard", "syn-data", b"\x01" + frames(tcp(40000, 8000, 1000, 0, 0x02), tcp(40000, 8000, 1001, 1, 0x18, b"GET / HTTP/1.1\r\n\r\n"), tcp(40000, 8000, 1019, 1, 0x11)))
put("wireguard", "ping", b"\x01" + frames(icmp_echo()))
put("wireguard", "closed-port", b"\x01" + frames(tcp(40000, 9, 1, 0, 0x02)))

# sftp: what a server says to the backup client, in the order of the client's requests (ids
# from 0): open, two writes, fsync, close, statvfs, rename, stat, opendir, readdir twice, close,
# open, read twice, close, remove.
def pkt(kind, body): return struct.pack(">I", len(body) + 1) + bytes([kind]) + body
def sstr(b): return struct.pack(">I", len(b)) + b
def u32(v): return struct.pack(">I", v)
def status(i, code=0, msg=b"Success"): return pkt(101, u32(i) + u32(code) + sstr(msg) + sstr(b""))
def handle(i, h): return pkt(102, u32(i) + sstr(h))
version = pkt(2, u32(3) + sstr(b"posix-rename@openssh.com") + sstr(b"1") + sstr(b"fsync@openssh.com")
              + sstr(b"1") + sstr(b"statvfs@openssh.com") + sstr(b"2"))
attrs = u32(0x01 | 0x04) + struct.pack(">Q", 40000) + u32(0o100600)
statvfs = pkt(201, u32(5) + struct.pack(">QQQQQQQQQQQ", 4096, 4096, 1000, 500, 500, 100, 50, 50, 0, 0, 255))
put("sftp", "run", version + handle(0, b"h0") + status(1) + status(2) + status(3) + status(4) + statvfs
    + status(6) + pkt(105, u32(7) + attrs) + handle(8, b"d0")
    + pkt(104, u32(9) + u32(1) + sstr(b"a") + sstr(b"-rw------- 1 0 0 40000 a") + attrs)
    + status(10, 1, b"EOF") + status(11) + handle(12, b"r0") + pkt(103, u32(13) + sstr(b"x" * 100))
    + status(14, 1, b"EOF") + status(15) + status(16))
put("sftp", "version-only", version)
put("sftp", "refused", version + status(0, 3, b"Permission denied"))
put("sftp", "out-of-order", version + handle(0, b"h0") + status(2) + status(1))
