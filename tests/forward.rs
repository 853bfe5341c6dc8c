//! `forward`: backend connect and the two-way relay, over real loopback
//! sockets. Every relay test runs twice: splice (Linux) and plain copy.
//!
//! Layout of a relay test: `client` <-> [client_inner  relay  backend_inner] <-> `backend`;
//! the test drives the two outer ends.

// Test helpers outside #[test] fns: clippy.toml's test allowance does not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sniroute::forward::{self, ByteCounters, RelayEnd, RelayOptions};
use socket2::{Domain, SockRef, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// Bound on waiting for any event that should come promptly (generous for
/// debug builds on a loaded CI machine).
const BOUND: Duration = Duration::from_secs(60);

/// A long idle timeout for tests that are not about it.
const NO_IDLE: Duration = Duration::from_secs(3600);

/// Generates one test per relay path from `async fn $name(splice: bool)`.
macro_rules! both_paths {
    ($name:ident, $splice:ident, $copy:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $splice() {
            $name(true).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $copy() {
            $name(false).await;
        }
    };
}

// ---------------------------------------------------------------- harness

async fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

/// What the relay task returns: its end, and the two metrics counters.
struct Finished {
    end: RelayEnd,
    up_counter: u64,
    down_counter: u64,
}

struct Harness {
    client: TcpStream,
    backend: TcpStream,
    relay: JoinHandle<Finished>,
}

/// Like `socket_pair`, with tiny kernel buffers between the relay's backend
/// socket (connecting side) and the backend (accepted side), so a backend that
/// does not read leaves the relay holding bytes in flight.
#[cfg(target_os = "linux")]
async fn small_buffer_pair() -> (TcpStream, TcpStream) {
    /// The kernel rounds this up to its minimum: a few KiB.
    const TINY: u32 = 4096;
    let listen = TcpSocket::new_v4().unwrap();
    listen.set_recv_buffer_size(TINY).unwrap();
    listen.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = listen.listen(16).unwrap();
    let connect = TcpSocket::new_v4().unwrap();
    connect.set_send_buffer_size(TINY).unwrap();
    let addr = listener.local_addr().unwrap();
    let (connected, accepted) = tokio::join!(connect.connect(addr), listener.accept());
    (connected.unwrap(), accepted.unwrap().0)
}

async fn start(splice: bool, idle_timeout: Duration) -> Harness {
    start_with(splice, idle_timeout, socket_pair().await).await
}

async fn start_with(
    splice: bool,
    idle_timeout: Duration,
    (backend_inner, backend): (TcpStream, TcpStream),
) -> Harness {
    let (client, client_inner) = socket_pair().await;
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counters = ByteCounters {
        up: metrics::Counter::from_arc(up.clone()),
        down: metrics::Counter::from_arc(down.clone()),
    };
    let opts = RelayOptions {
        idle_timeout,
        splice,
    };
    let relay = tokio::spawn(async move {
        let end = forward::relay(client_inner, backend_inner, opts, &counters).await;
        Finished {
            end,
            up_counter: up.load(Ordering::Relaxed),
            down_counter: down.load(Ordering::Relaxed),
        }
    });
    Harness {
        client,
        backend,
        relay,
    }
}

async fn finished(relay: JoinHandle<Finished>) -> Finished {
    timeout(BOUND, relay).await.expect("relay ends").unwrap()
}

/// A deterministic pseudo-random byte stream (xorshift64*), produced and
/// checked in blocks so debug builds stay fast.
struct Pattern {
    state: u64,
    block: Vec<u8>,
    pos: usize,
}

impl Pattern {
    const BLOCK: usize = 64 * 1024;

    fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed | 1,
            block: vec![0; Self::BLOCK],
            pos: Self::BLOCK,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            if self.pos == Self::BLOCK {
                for word in self.block.chunks_exact_mut(8) {
                    self.state ^= self.state >> 12;
                    self.state ^= self.state << 25;
                    self.state ^= self.state >> 27;
                    let value = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D);
                    word.copy_from_slice(&value.to_le_bytes());
                }
                self.pos = 0;
            }
            let n = (out.len() - done).min(Self::BLOCK - self.pos);
            out[done..done + n].copy_from_slice(&self.block[self.pos..self.pos + n]);
            self.pos += n;
            done += n;
        }
    }
}

/// Writes `len` pattern bytes, then shuts the write side (FIN).
async fn send_pattern(mut to: impl AsyncWriteExt + Unpin, seed: u64, len: usize) {
    let mut pattern = Pattern::new(seed);
    let mut chunk = vec![0; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        pattern.fill(&mut chunk[..n]);
        to.write_all(&chunk[..n]).await.unwrap();
        left -= n;
    }
    to.shutdown().await.unwrap();
}

/// Reads to EOF, checking every byte against the pattern; returns the count.
async fn expect_pattern(mut from: impl AsyncReadExt + Unpin, seed: u64) -> usize {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0; 256 * 1024];
    let mut want = vec![0; 256 * 1024];
    let mut total = 0;
    loop {
        let n = from.read(&mut buf).await.unwrap();
        if n == 0 {
            return total;
        }
        pattern.fill(&mut want[..n]);
        assert!(
            buf[..n] == want[..n],
            "bytes differ in [{total}, {})",
            total + n
        );
        total += n;
    }
}

// ---------------------------------------------------------------- relay

const BULK: usize = 64 * 1024 * 1024;

/// 64 MiB each way at the same time, byte-exact, counted right.
async fn bulk_both_ways(splice: bool) {
    let h = start(splice, NO_IDLE).await;
    let (client_rd, client_wr) = h.client.into_split();
    let (backend_rd, backend_wr) = h.backend.into_split();
    let tasks = [
        tokio::spawn(async move {
            send_pattern(client_wr, 1, BULK).await;
            0
        }),
        tokio::spawn(async move {
            send_pattern(backend_wr, 2, BULK).await;
            0
        }),
        tokio::spawn(expect_pattern(backend_rd, 1)),
        tokio::spawn(expect_pattern(client_rd, 2)),
    ];
    let mut received = Vec::new();
    for task in tasks {
        received.push(timeout(BOUND, task).await.expect("transfer ends").unwrap());
    }
    assert_eq!(received[2..], [BULK, BULK]);
    let done = finished(h.relay).await;
    done.end.result.unwrap();
    assert_eq!((done.end.up, done.end.down), (BULK as u64, BULK as u64));
    assert_eq!(
        (done.up_counter, done.down_counter),
        (BULK as u64, BULK as u64)
    );
}
both_paths!(bulk_both_ways, bulk_both_ways_splice, bulk_both_ways_copy);

/// How many bytes the side that closes second sends after the first FIN.
const AFTER_FIN: usize = 3 * 1024 * 1024 + 17;

/// The client shuts its write side first; the backend sees EOF, then still
/// sends AFTER_FIN bytes and closes. Everything arrives, then EOF both ways.
async fn half_close_client_first(splice: bool) {
    let mut h = start(splice, NO_IDLE).await;
    h.client.write_all(b"last words").await.unwrap();
    h.client.shutdown().await.unwrap();

    let mut got = Vec::new();
    timeout(BOUND, h.backend.read_to_end(&mut got))
        .await
        .expect("backend sees EOF")
        .unwrap();
    assert_eq!(got, b"last words");

    let (client_rd, _client_wr) = h.client.into_split();
    let reader = tokio::spawn(expect_pattern(client_rd, 3));
    send_pattern(&mut h.backend, 3, AFTER_FIN).await;
    let received = timeout(BOUND, reader)
        .await
        .expect("client sees EOF")
        .unwrap();
    assert_eq!(received, AFTER_FIN);

    let done = finished(h.relay).await;
    done.end.result.unwrap();
    assert_eq!((done.end.up, done.end.down), (10, AFTER_FIN as u64));
}
both_paths!(
    half_close_client_first,
    half_close_client_first_splice,
    half_close_client_first_copy
);

/// The reverse: the backend finishes first, the client keeps sending.
async fn half_close_backend_first(splice: bool) {
    let mut h = start(splice, NO_IDLE).await;
    h.backend.write_all(b"bye").await.unwrap();
    h.backend.shutdown().await.unwrap();

    let mut got = Vec::new();
    timeout(BOUND, h.client.read_to_end(&mut got))
        .await
        .expect("client sees EOF")
        .unwrap();
    assert_eq!(got, b"bye");

    let (backend_rd, _backend_wr) = h.backend.into_split();
    let reader = tokio::spawn(expect_pattern(backend_rd, 4));
    send_pattern(&mut h.client, 4, AFTER_FIN).await;
    let received = timeout(BOUND, reader)
        .await
        .expect("backend sees EOF")
        .unwrap();
    assert_eq!(received, AFTER_FIN);

    let done = finished(h.relay).await;
    done.end.result.unwrap();
    assert_eq!((done.end.up, done.end.down), (AFTER_FIN as u64, 3));
}
both_paths!(
    half_close_backend_first,
    half_close_backend_first_splice,
    half_close_backend_first_copy
);

/// Nothing moves: the relay ends with TimedOut after about the idle timeout,
/// and the client sees its connection closed.
async fn idle_timeout_fires(splice: bool) {
    let idle = Duration::from_millis(200);
    let mut h = start(splice, idle).await;
    let started = Instant::now();
    let done = finished(h.relay).await;
    let took = started.elapsed();
    let err = done.end.result.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert!(
        took >= idle,
        "ended after {took:?}, before the idle timeout"
    );
    assert!(took < Duration::from_secs(10), "ended only after {took:?}");
    let mut rest = Vec::new();
    let read = timeout(BOUND, h.client.read_to_end(&mut rest)).await;
    assert!(read.expect("client sees the close").is_ok_and(|n| n == 0));
}
both_paths!(
    idle_timeout_fires,
    idle_timeout_fires_splice,
    idle_timeout_fires_copy
);

/// Traffic more often than the idle timeout keeps the relay alive, in either
/// direction; once it stops, the timeout fires.
async fn traffic_defers_idle_timeout(splice: bool) {
    // Ten times the tick, so a slow scheduler does not make this flaky.
    let idle = Duration::from_secs(1);
    let tick = Duration::from_millis(100);
    let mut h = start(splice, idle).await;
    let started = Instant::now();
    let mut byte = [0u8; 1];
    for i in 0..15u8 {
        tokio::time::sleep(tick).await;
        if i % 2 == 0 {
            h.client.write_all(&[i]).await.unwrap();
            h.backend.read_exact(&mut byte).await.unwrap();
        } else {
            h.backend.write_all(&[i]).await.unwrap();
            h.client.read_exact(&mut byte).await.unwrap();
        }
        assert_eq!(byte, [i]);
    }
    assert!(
        started.elapsed() > idle,
        "the traffic outlasted one timeout"
    );
    assert!(!h.relay.is_finished());
    let done = finished(h.relay).await;
    assert_eq!(done.end.result.unwrap_err().kind(), io::ErrorKind::TimedOut);
    assert_eq!((done.end.up, done.end.down), (8, 7));
}
both_paths!(
    traffic_defers_idle_timeout,
    traffic_defers_idle_timeout_splice,
    traffic_defers_idle_timeout_copy
);

/// The backend resets mid-stream: the relay ends with an error and the
/// client's connection is closed (EOF or reset), never left hanging.
async fn backend_reset(splice: bool) {
    let mut h = start(splice, NO_IDLE).await;
    h.backend.write_all(&[7; 100_000]).await.unwrap();
    let mut first = vec![0; 1000];
    timeout(BOUND, h.client.read_exact(&mut first))
        .await
        .expect("client gets bytes")
        .unwrap();
    // Unread bytes in the backend socket plus linger 0: close sends RST.
    h.client.write_all(&[1; 10_000]).await.unwrap();
    SockRef::from(&h.backend)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(h.backend);

    let done = finished(h.relay).await;
    assert!(
        done.end.result.is_err(),
        "relay result: {:?}",
        done.end.result
    );

    let mut sink = vec![0; 64 * 1024];
    let closed = timeout(BOUND, async {
        loop {
            match h.client.read(&mut sink).await {
                Ok(0) => return "eof",
                Ok(_) => continue,
                Err(_) => return "error",
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "client never saw the close");
}
both_paths!(backend_reset, backend_reset_splice, backend_reset_copy);

// ---------------------------------------------------------------- connect

/// A loopback address where nothing listens: port 1 (never handed out for
/// port 0, unlike a port bound and released, which a listener of a test
/// running alongside could take) on a loopback address of its own.
fn refusing_addr() -> SocketAddr {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let [.., hi, lo] = NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
    SocketAddr::from(([127, 2, hi, lo], 1))
}

#[tokio::test]
async fn connect_skips_a_refusing_backend() {
    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let (stream, used) = forward::connect(&[refusing_addr(), live_addr], BOUND)
        .await
        .unwrap();
    assert_eq!(used, live_addr);
    assert!(stream.nodelay().unwrap());
    assert!(SockRef::from(&stream).keepalive().unwrap());
    #[cfg(target_os = "linux")]
    assert_eq!(
        SockRef::from(&stream).tcp_keepalive_time().unwrap(),
        Duration::from_secs(60)
    );
}

#[tokio::test]
async fn connect_reports_the_last_error() {
    let err = forward::connect(&[refusing_addr(), refusing_addr()], BOUND)
        .await
        .unwrap_err();
    assert_eq!(err.last.kind(), io::ErrorKind::ConnectionRefused);
    let none = forward::connect(&[], BOUND).await.unwrap_err();
    assert_eq!(none.last.kind(), io::ErrorKind::InvalidInput);
}

/// A listener with backlog 0 that never accepts: once its accept queue holds
/// one connection, Linux drops further SYNs, so a connect hangs. Returns the
/// address and what keeps the queue full.
#[cfg(target_os = "linux")]
async fn blackhole(attempt: Duration) -> (SocketAddr, Socket, Vec<TcpStream>) {
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    // The queue fills after one or two connections; 64 is a generous bound.
    for _ in 0..64 {
        match forward::connect(&[addr], attempt).await {
            Ok((stream, _)) => queued.push(stream),
            Err(e) => {
                assert_eq!(e.last.kind(), io::ErrorKind::TimedOut, "{}", e.last);
                return (addr, listener, queued);
            }
        }
    }
    panic!("a full accept queue never made connect hang");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn connect_times_out_then_tries_the_next() {
    let attempt = Duration::from_millis(300);
    let (dead, _listener, _queued) = blackhole(attempt).await;

    let started = Instant::now();
    let err = forward::connect(&[dead], attempt).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.last.kind(), io::ErrorKind::TimedOut);
    assert!(took >= attempt && took < BOUND, "took {took:?}");

    let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let live_addr = live.local_addr().unwrap();
    let (_stream, used) = forward::connect(&[dead, live_addr], attempt).await.unwrap();
    assert_eq!(used, live_addr);
}

// ---------------------------------------------------------------- pipes

/// Runs one small relay to its end: `len` bytes each way.
#[cfg(target_os = "linux")]
async fn one_relay(splice: bool, len: usize) {
    let h = start(splice, NO_IDLE).await;
    let (client_rd, client_wr) = h.client.into_split();
    let (backend_rd, backend_wr) = h.backend.into_split();
    let (_, _, up, down) = tokio::join!(
        send_pattern(client_wr, 5, len),
        send_pattern(backend_wr, 6, len),
        expect_pattern(backend_rd, 5),
        expect_pattern(client_rd, 6),
    );
    assert_eq!((up, down), (len, len));
    finished(h.relay).await.end.result.unwrap();
}

/// Descriptors open in this process.
#[cfg(target_os = "linux")]
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Counting this process's descriptors and pipes is only meaningful with no
/// other test running, so the checks run in a child process: this test binary
/// again, with only `pipe_pool_child` selected.
#[cfg(target_os = "linux")]
#[test]
fn pipe_pool_is_bounded_and_fds_do_not_leak() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "pipe_pool_child",
            "--exact",
            "--ignored",
            "--test-threads=1",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child did not run:\n{stdout}");
}

/// Run alone by `pipe_pool_is_bounded_and_fds_do_not_leak` (ignored otherwise).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "current_thread")]
#[ignore = "run in a child process by pipe_pool_is_bounded_and_fds_do_not_leak"]
async fn pipe_pool_child() {
    // No pipe to be had (descriptor limit reached): splice falls back to copy.
    no_pipe_falls_back_to_copy().await;
    assert_eq!(forward::idle_pipes(), 0);

    let before = open_fds();
    for i in 0..100 {
        one_relay(i % 2 == 0, 200_000).await;
    }
    // One relay at a time needs at most one pipe per direction: reused, not
    // accumulated.
    let idle = forward::idle_pipes();
    assert!(
        (1..=2).contains(&idle),
        "{idle} idle pipes after sequential relays"
    );
    assert_eq!(open_fds(), before + 2 * idle, "descriptors leaked");

    // More directions than the cap hold a pipe at once; once they are done,
    // exactly the cap stays idle and every other pipe is closed.
    let peak = forward::PIPE_POOL_CAP + 36;
    stuck_then_drained(peak).await;
    assert_eq!(forward::idle_pipes(), forward::PIPE_POOL_CAP);
    assert_eq!(
        open_fds(),
        before + 2 * forward::PIPE_POOL_CAP,
        "descriptors leaked"
    );
}

/// Pipe descriptors open in this process.
#[cfg(target_os = "linux")]
fn open_pipes() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("pipe:"))
        .count()
}

/// `n` splice relays whose backends do not read until every relay holds a
/// pipe with bytes in flight; then the backends read everything and close.
#[cfg(target_os = "linux")]
async fn stuck_then_drained(n: usize) {
    /// Far more than the tiny backend buffers hold, so the rest sits in the pipe.
    const LEN: usize = 1024 * 1024;
    // Pipes held by relays: open ones, less the idle pool.
    let held = || open_pipes() / 2 - forward::idle_pipes();
    let held_before = held();
    let mut backends = Vec::new();
    let mut relays = Vec::new();
    for _ in 0..n {
        let h = start_with(true, NO_IDLE, small_buffer_pair().await).await;
        let (_client_rd, client_wr) = h.client.into_split();
        tokio::spawn(send_pattern(client_wr, 9, LEN));
        backends.push(h.backend);
        relays.push(h.relay);
    }
    let deadline = Instant::now() + BOUND;
    while held() < held_before + n {
        let now_held = held() - held_before;
        assert!(
            Instant::now() < deadline,
            "{now_held} of {n} relays hold a pipe"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drained = backends.into_iter().map(|mut backend| async move {
        let (rd, mut wr) = backend.split();
        assert_eq!(expect_pattern(rd, 9).await, LEN);
        wr.shutdown().await.unwrap();
    });
    join_all(drained.collect()).await;
    for relay in relays {
        finished(relay).await.end.result.unwrap();
    }
}

/// Awaits every future, all polled concurrently by this one task.
#[cfg(target_os = "linux")]
async fn join_all<F: std::future::Future<Output = ()>>(futures: Vec<F>) {
    let mut pending: Vec<_> = futures.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// With the descriptor limit lowered so that no pipe can be created, a splice
/// relay still carries every byte (plain copy).
#[cfg(target_os = "linux")]
async fn no_pipe_falls_back_to_copy() {
    use rustix::process::{Resource, getrlimit, setrlimit};

    let h = start(true, NO_IDLE).await;
    let saved = getrlimit(Resource::Nofile);
    let mut lowered = saved;
    lowered.current = Some(open_fds() as u64);
    setrlimit(Resource::Nofile, lowered).unwrap();
    // Fill any free descriptor numbers below the limit.
    let mut fillers = Vec::new();
    while let Ok(file) = std::fs::File::open("/dev/null") {
        fillers.push(file);
    }
    assert!(rustix::pipe::pipe().is_err(), "no pipe can be created now");

    let (client_rd, client_wr) = h.client.into_split();
    let (backend_rd, backend_wr) = h.backend.into_split();
    let (_, _, up, down) = tokio::join!(
        send_pattern(client_wr, 7, 300_000),
        send_pattern(backend_wr, 8, 300_000),
        expect_pattern(backend_rd, 7),
        expect_pattern(client_rd, 8),
    );
    let done = finished(h.relay).await;
    drop(fillers);
    setrlimit(Resource::Nofile, saved).unwrap();
    assert_eq!((up, down), (300_000, 300_000));
    done.end.result.unwrap();
}

/// A backend whose handshake completes only after a wait (its SYN dropped
/// once, as on a lossy link): the connect waits for it instead of failing.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn connect_waits_for_a_slow_handshake() {
    let (slow, listener, _queued) = blackhole(Duration::from_millis(300)).await;
    let connecting = tokio::spawn(async move { forward::connect(&[slow], BOUND).await });
    // Let the first SYN be dropped, then make room in the accept queue: the
    // kernel's retransmitted SYN (about a second later) is answered.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!connecting.is_finished(), "connected through a full queue");
    listener.set_nonblocking(true).unwrap();
    while listener.accept().is_ok() {}
    let (mut stream, used) = timeout(BOUND, connecting).await.unwrap().unwrap().unwrap();
    assert_eq!(used, slow);
    stream.write_all(b"hello").await.unwrap();
}
