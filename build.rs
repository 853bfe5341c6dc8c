//! What the build makes besides code, all from one source each:
//!
//! - `sniroute --version` gets the git revision when built from a git
//!   checkout (`0.1.0 (git 1a2b3c4d5e6f)`); from a tarball, just the version.
//! - `sniroute(8)` and the bash, zsh and fish completions from the clap
//!   definition in `src/cli.rs`; `sniroute.toml(5)` from the key table in
//!   `src/config/reference.rs`. Both files are included here as modules.
//! - The packaged `/etc/sniroute/sniroute.toml`: the example config with the
//!   two lines a source checkout needs (state file and admin socket in the
//!   working directory and /tmp) set back to the defaults systemd provides.
//!
//! Everything lands in `OUT_DIR` (for tests) and in `target/<profile>/dist/`,
//! a fixed place `cargo deb` takes its assets from (`[package.metadata.deb]`);
//! man pages gzipped there, as Debian wants them.

use std::env;
use std::error::Error;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use clap_complete::Shell;
use roff::{Roff, bold, italic, roman};

#[allow(dead_code)]
#[path = "src/cli.rs"]
mod cli;
#[allow(dead_code)]
#[path = "src/config/reference.rs"]
mod reference;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// The example config, and the lines a packaged install changes in it.
const EXAMPLE: &str = "config/sniroute.toml";

/// The example's lines for a source checkout -> the packaged ones (the
/// defaults, in the directories the systemd unit creates).
const PACKAGED_LINES: [(&str, &str); 2] = [
    (
        "state_file = \"sniroute-bans.json\"",
        "state_file = \"/var/lib/sniroute/bans.json\"",
    ),
    (
        "socket = \"/tmp/sniroute-admin.sock\"",
        "socket = \"/run/sniroute/admin.sock\"",
    ),
];

/// The packaged config's first paragraph, in place of the example's (which
/// talks about running from a checkout). The rest is the example's text.
const PACKAGED_HEADER: &str = "\
# /etc/sniroute/sniroute.toml, installed by the sniroute package.
#
# Safe to start as is: it listens on loopback only (127.0.0.1:8443 and
# [::1]:8443; plain HTTP on :8080), routes one example name to
# 127.0.0.1:9443 (HTTP: :9080), and never bans the machine itself
# (ban.ignore keeps its default, loopback). Then:
#
#   sniroute check /etc/sniroute/sniroute.toml   # validate, print a summary
#   systemctl enable --now sniroute              # start, and at every boot
#   systemctl reload sniroute                    # after each edit
#
# The reference of every key: man 5 sniroute.toml. The commands: man 8 sniroute.
";

fn main() -> Result<()> {
    for path in ["build.rs", "src/cli.rs", "src/config/reference.rs", EXAMPLE] {
        println!("cargo:rerun-if-changed={path}");
    }
    version();
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let dist = dist_dir(&out);

    let mut cmd = cli::Cli::command();
    cmd.build();
    let pages = [
        ("sniroute.8", sniroute_8(&cmd)?),
        ("sniroute.toml.5", sniroute_toml_5()),
    ];
    for (name, page) in pages {
        write(&out.join(name), page.as_bytes())?;
        if let Some(dist) = &dist {
            write(
                &dist.join("man").join(format!("{name}.gz")),
                &gzip(page.as_bytes())?,
            )?;
        }
    }
    for (shell, name) in [
        (Shell::Bash, "sniroute.bash"),
        (Shell::Zsh, "_sniroute"),
        (Shell::Fish, "sniroute.fish"),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, "sniroute", &mut script);
        write(&out.join(name), &script)?;
        if let Some(dist) = &dist {
            write(&dist.join("completions").join(name), &script)?;
        }
    }
    let example = fs::read_to_string(EXAMPLE)?;
    let packaged = packaged_config(&example)?;
    write(&out.join("sniroute.toml"), packaged.as_bytes())?;
    if let Some(dist) = &dist {
        write(&dist.join("sniroute.toml"), packaged.as_bytes())?;
    }
    Ok(())
}

/// Sets `SNIROUTE_VERSION` to `VERSION (git REV)` when the crate is its own
/// git checkout (not, say, a tarball unpacked inside another repository).
///
/// Release builds (packages, CI) follow every new commit; debug builds keep
/// the revision of the build script's last run, so that a commit alone does
/// not recompile the crate and every test of everyone working on it.
fn version() {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git").args(args).output().ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        out.status.success().then(|| text.trim().to_owned())
    };
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let top = git(&["-C", &manifest_dir, "rev-parse", "--show-toplevel"]);
    let same = |top: &str| fs::canonicalize(top).ok() == fs::canonicalize(&manifest_dir).ok();
    if !top.as_deref().is_some_and(same) {
        return;
    }
    let Some(rev) = git(&["-C", &manifest_dir, "rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    if env::var("PROFILE").as_deref() == Ok("release") {
        let mut watched = vec!["HEAD".to_owned()];
        watched.extend(git(&["-C", &manifest_dir, "symbolic-ref", "-q", "HEAD"]));
        for name in watched {
            if let Some(path) = git(&["-C", &manifest_dir, "rev-parse", "--git-path", &name]) {
                let path = Path::new(&manifest_dir).join(path);
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let version = env::var("CARGO_PKG_VERSION").unwrap_or_default();
    println!("cargo:rustc-env=SNIROUTE_VERSION={version} (git {rev})");
}

/// `target/<profile>/dist` (OUT_DIR is `target/<profile>/build/sniroute-HASH/out`),
/// or `None` when the layout is not the one cargo uses today.
fn dist_dir(out: &Path) -> Option<PathBuf> {
    let build = out.parent()?.parent()?;
    (build.file_name()? == "build").then(|| build.parent().map(|p| p.join("dist")))?
}

/// Writes `bytes` through a temporary file and a rename, so a parallel build
/// (clippy beside test) never leaves a half-written file for `cargo deb`.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// `gzip -9n`: best compression, no name or time in the header (lintian's
/// rule for man pages; reproducible).
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(bytes)?;
    Ok(gz.finish()?)
}

fn packaged_config(example: &str) -> Result<String> {
    let body_at = example.find("\n# Every key is shown").ok_or(
        "config/sniroute.toml: the line \"# Every key is shown...\" that ends the header is gone",
    )?;
    let mut text = format!("{PACKAGED_HEADER}#{}", &example[body_at..]);
    for (from, to) in PACKAGED_LINES {
        let line = text
            .lines()
            .find(|l| l.trim() == from)
            .ok_or_else(|| format!("config/sniroute.toml: the line {from:?} is gone; build.rs makes it {to:?} in the package"))?
            .to_owned();
        text = text.replacen(&line, &line.replace(from, to), 1);
    }
    Ok(text)
}

/// `sniroute(8)`: clap_mangen's title, name, synopsis and description, then
/// every command with its arguments, then the daemon's ways.
fn sniroute_8(cmd: &clap::Command) -> Result<String> {
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("sniroute {}", cmd.get_version().unwrap_or("")));
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    let mut roff = Roff::new();
    roff.control("SH", ["DESCRIPTION"]);
    for paragraph in DESCRIPTION {
        roff.control("PP", []).text([roman(*paragraph)]);
    }
    roff.control("SH", ["COMMANDS"]);
    for sub in cmd.get_subcommands() {
        commands(&mut roff, sub, "sniroute");
    }
    for (title, paragraphs) in SECTIONS_8 {
        roff.control("SH", [*title]);
        for paragraph in *paragraphs {
            roff.control("PP", []).text([roman(*paragraph)]);
        }
    }
    roff.control("SH", ["SEE ALSO"]).text([
        bold("sniroute.toml"),
        roman("(5), "),
        bold("systemctl"),
        roman("(1), "),
        bold("journalctl"),
        roman("(1), "),
        bold("fail2ban-client"),
        roman("(1)"),
    ]);
    roff.to_writer(&mut page)?;
    Ok(String::from_utf8(page)?)
}

/// One subsection per command that does something (`bans add`...), with its
/// usage, what it does, and each argument and option.
fn commands(roff: &mut Roff, cmd: &clap::Command, parent: &str) {
    if cmd.is_hide_set() || cmd.get_name() == "help" {
        return;
    }
    let name = format!("{parent} {}", cmd.get_name());
    if cmd.has_subcommands() {
        for sub in cmd.get_subcommands() {
            commands(roff, sub, &name);
        }
        return;
    }
    let usage = cmd.clone().bin_name(&name).render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ").to_owned();
    roff.control("SS", [name.as_str()]);
    roff.text([bold(usage)]);
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        roff.control("PP", []).text([roman(about.to_string())]);
    }
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        if arg.get_id() == "help" || arg.get_id() == "version" {
            continue;
        }
        let values: Vec<String> = arg
            .get_value_names()
            .map(|v| v.iter().map(|n| format!("<{n}>")).collect())
            .unwrap_or_default();
        let mut flags = Vec::new();
        if let Some(short) = arg.get_short() {
            flags.push(format!("-{short}"));
        }
        if let Some(long) = arg.get_long() {
            flags.push(format!("--{long}"));
        }
        let mut head = vec![bold(flags.join(", "))];
        if arg.is_positional() {
            head = vec![italic(values.join(" "))];
        } else if arg.get_action().takes_values() {
            head.push(roman(" "));
            head.push(italic(values.join(" ")));
        }
        roff.control("TP", []).text(head);
        let mut help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        if !help.is_empty() && !help.ends_with('.') {
            help.push('.');
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if !defaults.is_empty() && arg.get_action().takes_values() {
            help.push_str(&format!(" Default: {}.", defaults.join(", ")));
        }
        roff.text([roman(help)]);
    }
}

/// `sniroute.toml(5)`: the reference table, section by section.
fn sniroute_toml_5() -> String {
    let mut roff = Roff::new();
    let version = env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let source = format!("sniroute {version}");
    roff.control(
        "TH",
        ["SNIROUTE.TOML", "5", "", source.as_str(), "File Formats"],
    );
    roff.control("SH", ["NAME"]).text([roman(
        "sniroute.toml - configuration of the sniroute TLS SNI router",
    )]);
    roff.control("SH", ["SYNOPSIS"])
        .text([bold("/etc/sniroute/sniroute.toml")]);
    roff.control("SH", ["DESCRIPTION"]);
    for paragraph in TOML_DESCRIPTION {
        roff.control("PP", []).text([roman(*paragraph)]);
    }
    roff.control("SH", ["KEYS"]);
    for section in reference::REFERENCE {
        let title = match section.header {
            "" => "Top level".to_owned(),
            header => header.to_owned(),
        };
        roff.control("SS", [title.as_str()]);
        roff.text([roman(section.about)]);
        for key in section.keys {
            let path = match section.name {
                "" => key.name.to_owned(),
                name => format!("{name}.{}", key.name),
            };
            // `workers = 0`: the default as it would be written; or
            // `listen (required)` when absence means something else.
            let default = match key.default.starts_with('(') {
                true => format!(" {}", key.default),
                false => format!(" = {}", key.default),
            };
            roff.control("TP", [])
                .text([bold(key.name), roman(default)]);
            roff.text([roman(format!("{} [{path}]", key.doc))]);
        }
    }
    roff.control("SH", ["EXAMPLE"]);
    roff.control("nf", []);
    for line in TOML_EXAMPLE.lines() {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);
    roff.control("SH", ["FILES"])
        .control("TP", [])
        .text([bold("/etc/sniroute/sniroute.toml")])
        .text([roman("The configuration read by sniroute.service.")])
        .control("TP", [])
        .text([bold("/usr/share/doc/sniroute/examples/sniroute.toml")])
        .text([roman("The commented example, every key with its default.")]);
    roff.control("SH", ["SEE ALSO"])
        .text([bold("sniroute"), roman("(8)")]);
    roff.render()
}

/// sniroute(8)'s DESCRIPTION.
const DESCRIPTION: &[&str] = &[
    "sniroute guards a TLS entry point without ever terminating TLS. It reads only the \
     ClientHello, takes the server name (SNI) and forwards the raw TCP stream, byte for byte, \
     to the backend that owns that name. Backends keep their keys and do their own TLS and \
     client-certificate checks.",
    "Unknown names, missing names and non-TLS traffic are closed without a single byte, and \
     their sources are struck and banned fail2ban-style; bans survive restarts. The machine \
     itself (127.0.0.0/8 and ::1) is never banned unless ban.ignore says otherwise.",
    "Every time sniroute prints for people (logs, status, bans list, the access log) is RFC \
     3339 UTC.",
];

/// sniroute(8)'s sections after COMMANDS.
const SECTIONS_8: &[(&str, &[&str])] = &[
    (
        "EXIT STATUS",
        &[
            "check: 0 valid, 1 invalid (each problem as PATH:LINE:COL: message), 2 unreadable.",
            "status, bans, reload: 0 done, 1 refused (for example bans add of an ignored \
             address, or of a prefix wider than /8 or /32 without --force), 2 the daemon \
             cannot be reached.",
            "run: 0 after a clean stop, 1 when it cannot start.",
        ],
    ),
    (
        "SIGNALS",
        &[
            "SIGHUP reloads the configuration (an invalid one is refused and logged; open \
             connections are never cut). SIGUSR1 reopens the access log file. SIGTERM and \
             SIGINT stop accepting and let open connections finish for up to \
             limits.shutdown_grace; a second one ends the wait.",
        ],
    ),
    (
        "ENVIRONMENT",
        &[
            "SNIROUTE_LOG sets the log filter (error, warn, info, debug; default info). \
             Under systemd, sockets from sniroute.socket (LISTEN_FDS) replace the listen \
             addresses.",
        ],
    ),
    (
        "FILES",
        &[
            "/etc/sniroute/sniroute.toml: the configuration (see sniroute.toml(5)). \
             /var/lib/sniroute/bans.json: bans in force, kept across restarts; removed by \
             apt purge. /run/sniroute/admin.sock: the admin socket. \
             /lib/systemd/system/sniroute.service and sniroute.socket: the units; the \
             package does not start them: systemctl enable --now sniroute.",
        ],
    ),
    (
        "EXAMPLES",
        &[
            "sniroute check /etc/sniroute/sniroute.toml",
            "sniroute status",
            "sniroute bans list",
            "sniroute bans add 203.0.113.0/24 --for 30d",
            "sniroute bans remove 203.0.113.7",
        ],
    ),
];

/// sniroute.toml(5)'s DESCRIPTION.
const TOML_DESCRIPTION: &[&str] = &[
    "sniroute reads one TOML file. Only listen and at least one [[route]] are required; every \
     other key has the default shown below. Unknown keys are errors, each reported with its \
     file, line and column, like every other problem: run sniroute check FILE after each edit.",
    "Durations are strings like \"500ms\", \"5s\", \"10m\", \"1h\", \"365d\", \"1h30m\". \
     Addresses are \"IP:PORT\", IPv6 in brackets (\"[::1]:443\"). CIDRs are \"ADDR/LEN\" or a \
     bare address. Host names are never resolved: sniroute only connects to addresses written \
     in the file.",
    "A reload (systemctl reload sniroute, SIGHUP, or sniroute reload) reads the file again \
     with the same checks; an invalid file is refused and the running configuration stays.",
];

/// sniroute.toml(5)'s EXAMPLE.
const TOML_EXAMPLE: &str = r#"listen = ["0.0.0.0:443", "[::]:443"]

[[route]]
sni = ["myapp.example.org"]
backend = "10.0.0.5:443"
proxy_protocol = "v2"

[[route]]
sni = ["*.apps.example.org"]
backends = ["10.0.0.6:443", "10.0.0.7:443"]

[ban]
ignore = ["127.0.0.0/8", "::1", "192.0.2.10"]"#;
