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

configs = {
    "minimal.toml": 'listen = ["127.0.0.1:8443"]\n\n[[route]]\nsni = ["app.example.org"]\nbackend = "127.0.0.1:9443"\n',
    "errors.toml": 'listen = ["1.2.3.4"]\nworkers = -1\ntypo = 1\n\n[[route]]\nsni = ["*.*.x", "a..b"]\nbackend = "nohost:99999"\n\n[limits]\nidle_timeout = "5 parsecs"\n',
    "syntax.toml": 'listen = ["127.0.0.1:443"\n[[route]\n',
}
for name, text in configs.items():
    (config_dir / name).write_text(text)
for name in ["sniroute.toml"]:
    (config_dir / f"example-{name}").write_text((root.parent / "config" / name).read_text())
