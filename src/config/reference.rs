//! The config reference: every key of `sniroute.toml`, its default and what
//! it does. The one source of `sniroute.toml(5)` (written by `build.rs`,
//! which includes this file, so it stays plain data with no `use`), and
//! checked by tests (`keys.rs`) against the parser: every key the parser
//! knows is here and nothing else, and every default written here as a TOML
//! value is the default the parser applies.
//!
//! Adding a key: add it to its `Raw*` struct, then a [`Key`] here (the
//! `every_key_is_in_the_reference` test says which one is missing).

/// One table of the file.
pub struct Section {
    /// The key path prefix: `""` (top level), `"limits"`, `"route"`,
    /// `"route.health_check"`...
    pub name: &'static str,
    /// How it is written: `""` (top level), `"[limits]"`, `"[[route]]"`...
    pub header: &'static str,
    /// What the table is for (plain text, one paragraph).
    pub about: &'static str,
    /// Its keys, in the order the man page lists them.
    pub keys: &'static [Key],
}

/// One key.
pub struct Key {
    /// The key as written in its table.
    pub name: &'static str,
    /// The default as a TOML value (`"5s"`, `16384`, `["127.0.0.0/8", "::1"]`),
    /// or, in parentheses, what absence means: `(required)`, `(none)`...
    pub default: &'static str,
    /// What it does (plain text; `code` in backquotes).
    pub doc: &'static str,
}

/// Every table, in the order of the example config.
pub const REFERENCE: &[Section] = &[
    Section {
        name: "",
        header: "",
        about: "Keys at the top of the file, before the first [table].",
        keys: &[
            Key {
                name: "listen",
                default: "(required)",
                doc: "Addresses to accept TLS clients on, one or more \"IP:PORT\" (IPv6 in brackets). \
                      A listener on \"[::]\" is IPv6-only, so it can sit beside one on \"0.0.0.0\". \
                      Ignored under systemd socket activation (sniroute.socket), which hands the \
                      sockets over.",
            },
            Key {
                name: "workers",
                default: "0",
                doc: "Threads serving connections; 0 = one per CPU core, 1 = a single-threaded runtime.",
            },
            Key {
                name: "splice",
                default: "true",
                doc: "Relay bytes with splice(2) on Linux (zero-copy through a pipe); false forces \
                      a plain userspace copy (same behaviour, more CPU).",
            },
            Key {
                name: "defer_accept",
                default: "true",
                doc: "Linux TCP_DEFER_ACCEPT (nginx's `deferred`): the kernel hands a connection \
                      over once its first bytes arrived, so every refusal costs less; TLS and \
                      plain HTTP are client-first, so no real client waits for it. A silent \
                      client is handed over after about a second; one that leaves without a \
                      byte within that second is never seen (no outcome, no log line, no \
                      strike). false turns it off.",
            },
        ],
    },
    Section {
        name: "limits",
        header: "[limits]",
        about: "Time and size bounds on every connection.",
        keys: &[
            Key {
                name: "client_hello_timeout",
                default: "\"5s\"",
                doc: "The whole ClientHello must arrive within this; otherwise outcome `timeout`.",
            },
            Key {
                name: "max_client_hello",
                default: "16384",
                doc: "Bytes received before the routing decision, TLS record headers included \
                      (512 to 65536); more is outcome `too_large`. Real hellos are 250-600 bytes, \
                      post-quantum ones about 1.8 KiB.",
            },
            Key {
                name: "connect_timeout",
                default: "\"3s\"",
                doc: "Per backend connection attempt.",
            },
            Key {
                name: "idle_timeout",
                default: "\"15m\"",
                doc: "No byte either way for this long closes both sides of a routed connection.",
            },
            Key {
                name: "max_connections",
                default: "20000",
                doc: "Open client connections; beyond this new ones are closed at once \
                      (outcome `overloaded`).",
            },
            Key {
                name: "shutdown_grace",
                default: "\"30s\"",
                doc: "On SIGTERM/SIGINT: stop accepting, let open connections finish for up to \
                      this long, then exit. \"0s\" exits at once.",
            },
        ],
    },
    Section {
        name: "tls",
        header: "[tls]",
        about: "What a ClientHello must offer to be routed.",
        keys: &[Key {
            name: "min_version",
            default: "\"1.2\"",
            doc: "A hello offering nothing at or above this version is refused (outcome \
                  `policy`). One of \"1.0\", \"1.1\", \"1.2\", \"1.3\".",
        }],
    },
    Section {
        name: "http",
        header: "[http]",
        about: "Plain HTTP/1.x listeners (port 80: ACME HTTP-01, the redirect to HTTPS). The \
                first request's Host header picks the route, and the connection goes, bytes \
                untouched, to the route's http_backends. Refused without a byte, and struck by \
                default: an unknown Host (`unknown_host`), no usable Host (`no_host`), anything \
                not an HTTP/1.x request (`not_http`).",
        keys: &[Key {
            name: "listen",
            default: "[]",
            doc: "Addresses for plain HTTP, like [\"0.0.0.0:80\", \"[::]:80\"]; an address may \
                  not also be in the top-level listen. [] = no plain-HTTP listener.",
        }],
    },
    Section {
        name: "route",
        header: "[[route]]",
        about: "One [[route]] per service (at least one). sniroute never terminates TLS: the \
                backend does its own TLS and client-certificate checks.",
        keys: &[
            Key {
                name: "sni",
                default: "(required)",
                doc: "Names this route serves: exact names, or \"*.example.org\" (one or more \
                      labels before \".example.org\", not \"example.org\" itself). \
                      Case-insensitive, a trailing dot is ignored. The first entry names the \
                      route in logs and metrics.",
            },
            Key {
                name: "backend",
                default: "(required: backend or backends)",
                doc: "Where to send the raw TCP stream, \"IP:PORT\". Host names are never resolved.",
            },
            Key {
                name: "backends",
                default: "(required: backend or backends)",
                doc: "Several backends instead of one, tried in turn when one refuses or times \
                      out (exactly one of `backend` and `backends`).",
            },
            Key {
                name: "proxy_protocol",
                default: "\"none\"",
                doc: "Tell the backend the client's real address with a PROXY protocol header: \
                      \"none\", \"v1\" (text) or \"v2\" (binary). The backend must expect it.",
            },
            Key {
                name: "http_backends",
                default: "(none)",
                doc: "Where plain HTTP for these names goes from the [http] listeners, tried in \
                      turn like backends; without it the names are unknown hosts there.",
            },
            Key {
                name: "allow",
                default: "(every source)",
                doc: "Addresses or CIDRs allowed to use this route, like nginx's stream `allow`; \
                      any other source is closed without a byte (outcome `denied`).",
            },
            Key {
                name: "alpn",
                default: "(none)",
                doc: "ALPN ids (like [\"acme-tls/1\"]): routes may share a name when their `alpn` \
                      lists differ; a route whose list meets the hello's ALPN offer wins over the \
                      one without `alpn`. Such a route is named NAME[FIRST-ID] in logs and metrics.",
            },
            Key {
                name: "balance",
                default: "\"first\"",
                doc: "Which backend a new connection tries first: \"first\" (in order), \
                      \"round_robin\" or \"least_connections\".",
            },
            Key {
                name: "health_check",
                default: "(none: no active checks)",
                doc: "A [route.health_check] table: active TCP checks of the route's backends \
                      (keys below).",
            },
        ],
    },
    Section {
        name: "route.health_check",
        header: "[route.health_check]",
        about: "Active health checks of one route's backends, written right after its [[route]].",
        keys: &[
            Key {
                name: "interval",
                default: "\"5s\"",
                doc: "Time between two checks of a backend.",
            },
            Key {
                name: "timeout",
                default: "\"1s\"",
                doc: "How long one check may take.",
            },
            Key {
                name: "fall",
                default: "3",
                doc: "Failed checks in a row that take a backend out of rotation.",
            },
            Key {
                name: "rise",
                default: "2",
                doc: "Passed checks in a row that bring it back.",
            },
        ],
    },
    Section {
        name: "unknown",
        header: "[unknown]",
        about: "What a valid ClientHello gets when no route matches its SNI, or it has none. \
                A hello that fails to parse, is too large, too slow or below min_version is \
                always rejected.",
        keys: &[
            Key {
                name: "action",
                default: "\"reject\"",
                doc: "\"reject\": close without sending a byte (nginx's `return 444`), and strike. \
                      \"forward\": send it to `backend` (or `backends`) instead, without a strike; \
                      the route is named `unknown`.",
            },
            Key {
                name: "backend",
                default: "(none)",
                doc: "With action = \"forward\": where to send it.",
            },
            Key {
                name: "backends",
                default: "(none)",
                doc: "With action = \"forward\": several backends tried in turn.",
            },
            Key {
                name: "proxy_protocol",
                default: "(\"none\" with action = \"forward\")",
                doc: "With action = \"forward\": \"none\", \"v1\" or \"v2\", as for a route.",
            },
        ],
    },
    Section {
        name: "ban",
        header: "[ban]",
        about: "fail2ban, built in: strikes within find_time earn a ban; a banned source is \
                closed right after accept, before a byte is read, on every route.",
        keys: &[
            Key {
                name: "enabled",
                default: "true",
                doc: "Strike and ban. false stops new strikes and automatic bans; bans already \
                      made and manual bans stay in force.",
            },
            Key {
                name: "max_retry",
                default: "1",
                doc: "Strikes within find_time that earn a ban (1 = ban at the first strike).",
            },
            Key {
                name: "find_time",
                default: "\"1h\"",
                doc: "The window strikes are counted in.",
            },
            Key {
                name: "ban_time",
                default: "\"365d\"",
                doc: "How long a ban lasts.",
            },
            Key {
                name: "ignore",
                default: "[\"127.0.0.0/8\", \"::1\"]",
                doc: "Addresses or CIDRs never struck, never banned (even by hand), never \
                      rate-limited; bare addresses mean /32 or /128. The default is the machine \
                      itself (fail2ban's default too), so trying sniroute from the same host can \
                      never ban you. A list written here replaces the default: keep loopback in \
                      it. `sniroute check` prints the list in force.",
            },
            Key {
                name: "strike_on",
                default: "[\"unknown_sni\", \"no_sni\", \"not_tls\", \"unknown_host\", \"no_host\", \"not_http\"]",
                doc: "Outcomes that count as a strike (the last three on the [http] listeners); \
                      also possible: \"timeout\", \"policy\", \"too_large\", \"denied\". \
                      [] = manual bans only.",
            },
            Key {
                name: "ipv6_prefix",
                default: "64",
                doc: "IPv6 clients are struck and banned per prefix of this length (1 to 128): \
                      one host usually owns a whole /64.",
            },
            Key {
                name: "state_file",
                default: "\"/var/lib/sniroute/bans.json\"",
                doc: "Bans survive restarts and crashes in this file (written within a second \
                      of a change). \"\" keeps bans in memory only.",
            },
        ],
    },
    Section {
        name: "rate_limit",
        header: "[rate_limit]",
        about: "New connections per source address (per ipv6_prefix for IPv6): a bucket of \
                `burst` connections refilled at `per_ip` per second; beyond it the connection \
                is closed at once (outcome `rate_limited`).",
        keys: &[
            Key {
                name: "per_ip",
                default: "20",
                doc: "Refill rate per second; 0 turns rate limiting off.",
            },
            Key {
                name: "burst",
                default: "40",
                doc: "The bucket size; at least 1 when per_ip is not 0.",
            },
        ],
    },
    Section {
        name: "metrics",
        header: "[metrics]",
        about: "The Prometheus endpoint.",
        keys: &[Key {
            name: "listen",
            default: "\"127.0.0.1:9151\"",
            doc: "Serve GET /metrics here; \"\" = no metrics endpoint.",
        }],
    },
    Section {
        name: "admin",
        header: "[admin]",
        about: "The control socket of `sniroute status`, `sniroute bans` and `sniroute reload`.",
        keys: &[Key {
            name: "socket",
            default: "\"/run/sniroute/admin.sock\"",
            doc: "Unix socket, mode 0600; \"\" = none. A stale file left by a crash is \
                  replaced at start.",
        }],
    },
    Section {
        name: "log",
        header: "[log]",
        about: "The access log: one line per connection when it ends.",
        keys: &[
            Key {
                name: "access",
                default: "\"stdout\"",
                doc: "\"stdout\", \"off\", or a file path (appended to; reopened on SIGUSR1 and \
                      on reload, for log rotation).",
            },
            Key {
                name: "format",
                default: "\"text\"",
                doc: "\"text\" or \"json\" (the same fields as keys). Times are RFC 3339 UTC.",
            },
        ],
    },
    Section {
        name: "firewall",
        header: "[firewall]",
        about: "Kernel bans: every ban in force also dropped by nftables before sniroute sees \
                the packets.",
        keys: &[
            Key {
                name: "backend",
                default: "\"none\"",
                doc: "\"none\": bans are enforced in user space only, right after accept. \
                      \"nftables\": each ban is also an element of a set in the table \
                      `inet <table>`, with the time the ban has left as its timeout. Needs nft \
                      (package nftables) and CAP_NET_ADMIN (root, or the unit's drop-in \
                      sniroute.service.d/nftables.conf). Addresses in ban.ignore never go in.",
            },
            Key {
                name: "table",
                default: "\"sniroute\"",
                doc: "The table sniroute creates at start, re-creates within 10 s if something \
                      removes it, and deletes at a clean stop.",
            },
            Key {
                name: "scope",
                default: "\"listen\"",
                doc: "\"listen\": drop banned sources' TCP packets to the listen ports only; \
                      \"all\": drop every packet from them.",
            },
        ],
    },
    Section {
        name: "proxy_protocol",
        header: "[proxy_protocol]",
        about: "Trusted balancers in front of sniroute (an L4 load balancer, HAProxy with \
                send-proxy-v2, a cloud NLB with proxy protocol on).",
        keys: &[Key {
            name: "accept_from",
            default: "[]",
            doc: "Addresses or CIDRs of the balancers. A connection from one of them must start \
                  with a PROXY v1 or v2 header within limits.client_hello_timeout; the client \
                  named in it is then the source for everything (bans, rate limits, strikes, \
                  the access log, the PROXY header sent on to a backend), and the balancer \
                  itself is never struck, banned nor rate-limited. Without a valid header the \
                  connection is closed (outcome `proxy_error`). [] = no trusted balancers.",
        }],
    },
    Section {
        name: "crowdsec",
        header: "[crowdsec]",
        about: "Bans shared through CrowdSec's Local API (LAPI): sniroute pulls ban decisions \
                as a bouncer (enforced at accept like its own bans; ban.ignore wins) and, with \
                push = true, reports its own bans. The daemon routes while the LAPI is down.",
        keys: &[
            Key {
                name: "lapi_url",
                default: "\"\"",
                doc: "The LAPI's URL; \"\" = off. http:// only to a loopback address, https:// \
                      otherwise.",
            },
            Key {
                name: "api_key_file",
                default: "\"/etc/sniroute/crowdsec.key\"",
                doc: "File holding the bouncer key (cscli bouncers add NAME -o raw), one key per \
                      gateway. Read when lapi_url is set and cert_file is not.",
            },
            Key {
                name: "update_frequency",
                default: "\"10s\"",
                doc: "Time between two pulls of the decision stream.",
            },
            Key {
                name: "push",
                default: "false",
                doc: "Also report this gateway's bans to the LAPI as machine `machine_id`; \
                      `sniroute bans remove` then deletes them there too.",
            },
            Key {
                name: "machine_id",
                default: "\"\"",
                doc: "The machine login for push (cscli machines add NAME --password ...); \
                      required with push = true unless cert_file is set.",
            },
            Key {
                name: "password_file",
                default: "\"/etc/sniroute/crowdsec.pass\"",
                doc: "File holding that machine's password.",
            },
            Key {
                name: "scenario",
                default: "\"sniroute/unknown-sni\"",
                doc: "Scenario name on pushed alerts and decisions.",
            },
            Key {
                name: "ca_cert_file",
                default: "\"\"",
                doc: "PEM file of CA certificates trusted for an https LAPI in addition to the \
                      system's roots (a private CA or the LAPI's self-signed certificate), like \
                      the official bouncers' ca_cert_path. \"\" = system roots only.",
            },
            Key {
                name: "cert_file",
                default: "\"\"",
                doc: "PEM client certificate (chain) for CrowdSec's TLS auth, with key_file: the \
                      LAPI takes it instead of the bouncer key and the machine password (neither \
                      file is read then) and names the bouncer and machine CN@address. Its OU \
                      must be in the LAPI's api.server.tls.bouncers_allowed_ou (and \
                      agents_allowed_ou with push). https only.",
            },
            Key {
                name: "key_file",
                default: "\"\"",
                doc: "The PEM private key of cert_file.",
            },
        ],
    },
];
