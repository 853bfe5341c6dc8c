#!/usr/bin/env python3
"""Regenerates fuzz/seeds/ from tests/fixtures (run from anywhere).

clienthello seeds carry the target's 3-byte header [cap_hi, cap_lo, split_seed]
before the stream (cap 0 = the default 16384; split_seed 0 = one-byte reads).
"""
import pathlib

root = pathlib.Path(__file__).resolve().parent
fixtures = root.parent / "tests" / "fixtures" / "clienthello"
hello_dir = root / "seeds" / "clienthello"
config_dir = root / "seeds" / "config"
proxy_dir = root / "seeds" / "proxyheader"
proxy_dir.mkdir(parents=True, exist_ok=True)
hello_dir.mkdir(parents=True, exist_ok=True)
config_dir.mkdir(parents=True, exist_ok=True)


def reframe(hello, sizes):
    """The hello's handshake message re-cut into records of these payload sizes."""
    msg, rest = b"", hello
    while rest:
        n = int.from_bytes(rest[3:5], "big")
        msg += rest[5 : 5 + n]
        rest = rest[5 + n :]
    out = b""
    for size in sizes + [len(msg)]:
        chunk, msg = msg[:size], msg[size:]
        if chunk:
            out += hello[:3] + len(chunk).to_bytes(2, "big") + chunk
    return out


def seed(name, stream, cap=0, split=0):
    (hello_dir / name).write_bytes(cap.to_bytes(2, "big") + bytes([split]) + stream)


for path in sorted(fixtures.glob("*.bin")):
    hello = path.read_bytes()
    seed(path.stem, hello, split=0 if len(hello) <= 600 else 7)
seed("curl-split", reframe((fixtures / "curl.bin").read_bytes(), [1, 3, 100]), split=3)
seed("openssl-4records", reframe((fixtures / "openssl.bin").read_bytes(), [2, 2, 50]))
seed("curl-cap517", (fixtures / "curl.bin").read_bytes(), cap=517, split=9)
seed("curl-cap516", (fixtures / "curl.bin").read_bytes(), cap=516, split=9)
seed("curl-trailing", (fixtures / "curl.bin").read_bytes() + b"\x17\x03\x03\x00\x05hello", split=5)
seed("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
seed("huge-declared", b"\x16\x03\x01\x40\x00\x01\xff\xff\xff")
seed("sslv2", bytes.fromhex("802e0103010015000000100000040100800700c0") + b"\x5a" * 16)


def proxy_seed(name, stream, split=0):
    """proxyheader seeds carry the target's 1-byte header [split_seed]."""
    (proxy_dir / name).write_bytes(bytes([split]) + stream)


V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
INET = bytes([203, 0, 113, 7, 192, 0, 2, 1]) + (51234).to_bytes(2, "big") + (443).to_bytes(2, "big")
INET6 = bytes.fromhex("20010db8000000000000000000000007" "20010db8000000000000000000000001") + bytes.fromhex("c82201bb")
curl = (fixtures / "curl.bin").read_bytes()


def v2(cmd, fam, body):
    return V2_SIG + bytes([cmd, fam]) + len(body).to_bytes(2, "big") + body


def tlv(kind, value):
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


proxy_seed("v1-tcp4-hello", b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\r\n" + curl)
proxy_seed("v1-tcp6", b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 443\r\n", split=3)
proxy_seed("v1-unknown", b"PROXY UNKNOWN\r\n" + curl, split=5)
proxy_seed("v1-too-long", b"PROXY UNKNOWN " + b"x" * 120 + b"\r\n")
proxy_seed("v2-tcp4-hello", v2(0x21, 0x11, INET) + curl, split=9)
proxy_seed("v2-tcp6", v2(0x21, 0x21, INET6))
proxy_seed("v2-tlvs", v2(0x21, 0x11, INET + tlv(1, b"h2") + tlv(2, b"app.example.org") + tlv(0xEA, b"\x01vpce-08d2bf15fac5001c9")), split=2)
proxy_seed("v2-local", v2(0x20, 0x00, b"") + curl)
proxy_seed("v2-unix", v2(0x21, 0x31, b"/" * 216))
proxy_seed("v2-too-long", V2_SIG + bytes([0x21, 0x11, 0xFF, 0xFF]))
proxy_seed("v2-bad-tlv", v2(0x21, 0x11, INET + b"\x04\x00\x09ab"))
proxy_seed("tls-without-header", curl, split=4)

configs = {
    "minimal.toml": 'listen = ["127.0.0.1:8443"]\n\n[[route]]\nsni = ["app.example.org"]\nbackend = "127.0.0.1:9443"\n',
    "errors.toml": 'listen = ["1.2.3.4"]\nworkers = -1\ntypo = 1\n\n[[route]]\nsni = ["*.*.x", "a..b"]\nbackend = "nohost:99999"\n\n[limits]\nidle_timeout = "5 parsecs"\n',
    "syntax.toml": 'listen = ["127.0.0.1:443"\n[[route]\n',
}
for name, text in configs.items():
    (config_dir / name).write_text(text)
for name in ["sniroute.toml"]:
    (config_dir / f"example-{name}").write_text((root.parent / "config" / name).read_text())
