//! Long-running routed connections that stream a deterministic byte pattern
//! both ways at once through the daemon (to an echo backend) and check every
//! byte that comes back: the load a reload must not disturb.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::traffic::open_routed;

/// Bytes per write: small enough that every stream moves often, big enough
/// that 50 streams push real volume through the relay.
const CHUNK: usize = 4096;

/// Pause between writes: 4 KiB every 5 ms is 800 KB/s per stream, 40 MB/s
/// each way for 50 streams. Unpaced, the test's own pattern checking (in a
/// debug build, on two cores) would starve the daemon it is testing.
const PACE: Duration = Duration::from_millis(5);

/// A pseudo-random byte sequence (xorshift64*) that the writer and the
/// reader of a stream generate independently from the same seed.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for byte in out {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                self.used = 0;
            }
            *byte = self.word[self.used];
            self.used += 1;
        }
    }
}

/// How a stream ended.
#[derive(Debug)]
pub struct Report {
    /// Tag of the backend the stream reached.
    pub tag: u8,
    pub written: u64,
    /// Bytes echoed back, every one checked against the pattern.
    pub read: u64,
}

/// One streaming connection: a writer and a checking reader thread.
pub struct Stream {
    /// Bytes read back and checked so far.
    pub progress: Arc<AtomicU64>,
    tag: u8,
    writer: JoinHandle<Result<u64, String>>,
    reader: JoinHandle<Result<u64, String>>,
}

impl Stream {
    /// Opens a routed connection for `name` and starts streaming until `stop`.
    pub fn start(
        id: u64,
        from: IpAddr,
        to: SocketAddr,
        name: &str,
        stop: &Arc<AtomicBool>,
    ) -> Stream {
        let (stream, tag) =
            open_routed(from, to, name).unwrap_or_else(|| panic!("stream {id}: no route"));
        let mut write_half = stream.try_clone().expect("clone stream");
        let mut read_half = stream;
        let progress = Arc::new(AtomicU64::new(0));
        let stop = Arc::clone(stop);
        let writer = std::thread::spawn(move || {
            let mut pattern = Pattern::new(id);
            let mut chunk = vec![0u8; CHUNK];
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                pattern.fill(&mut chunk);
                write_half
                    .write_all(&chunk)
                    .map_err(|e| format!("stream {id}: write after {written} bytes: {e}"))?;
                written += CHUNK as u64;
                std::thread::sleep(PACE);
            }
            write_half
                .shutdown(Shutdown::Write)
                .map_err(|e| format!("stream {id}: shutdown: {e}"))?;
            Ok(written)
        });
        let seen = Arc::clone(&progress);
        let reader = std::thread::spawn(move || {
            let mut pattern = Pattern::new(id);
            let mut got = vec![0u8; CHUNK];
            let mut want = vec![0u8; CHUNK];
            let mut read = 0u64;
            loop {
                let n = match read_half.read(&mut got) {
                    Ok(0) => return Ok(read),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(format!("stream {id}: read after {read} bytes: {e}")),
                };
                pattern.fill(&mut want[..n]);
                if got[..n] != want[..n] {
                    return Err(format!("stream {id}: wrong bytes at offset {read}"));
                }
                read += n as u64;
                seen.store(read, Ordering::Relaxed);
            }
        });
        Stream {
            progress,
            tag,
            writer,
            reader,
        }
    }

    /// Waits for both halves (call after setting `stop`).
    pub fn finish(self) -> Result<Report, String> {
        let written = self.writer.join().map_err(|_| "writer panicked")??;
        let read = self.reader.join().map_err(|_| "reader panicked")??;
        Ok(Report {
            tag: self.tag,
            written,
            read,
        })
    }
}
