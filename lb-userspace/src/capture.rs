//! `lbctl capture`: reads the CAPTURE perf buffers the balancer fills for one VIP while the
//! agent has capture switched on, and writes a pcap file readable by `tcpdump -r`.
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use lb_common::{CaptureMeta, CAPTURE_BEFORE, CAPTURE_SNAPLEN};

use crate::datapath::{CaptureBuffers, Datapath, DatapathError};

/// How long [`Capturer::collect`] takes at most to see that it was cancelled.
pub const CANCEL_LATENCY: Duration = Duration::from_millis(50);

/// One copy of a frame, before (`after == false`) or after the rewrite.
pub struct Captured {
    pub after: bool,
    /// When the program saw it.
    pub at: SystemTime,
    /// The frame, up to [`CAPTURE_SNAPLEN`] bytes.
    pub frame: Vec<u8>,
    /// The whole frame's length on the wire.
    pub wire_len: u32,
}

/// The per-CPU perf buffers, opened once at start-up.
pub struct Capturer {
    buffers: CaptureBuffers,
}

impl Capturer {
    pub fn open(dp: &mut Datapath) -> Result<Self, DatapathError> {
        Ok(Capturer { buffers: CaptureBuffers::open(dp)? })
    }

    /// Throws away whatever earlier captures left in the buffers.
    pub fn drain(&mut self) {
        for i in 0..self.buffers.len() {
            self.buffers.read(i, |_| {});
        }
    }

    /// Collects the copies of `packets` packets of VIP `vip` (each before and after its
    /// rewrite), or what arrived before `timeout` or before `cancel` is set (seen within
    /// [`CANCEL_LATENCY`]). Returns them and the count the kernel lost.
    pub fn collect(
        &mut self,
        vip: u32,
        packets: usize,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> (Vec<Captured>, u64) {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut lost = 0;
        let wanted = packets * 2;
        // A packet's two copies are written to its CPU's buffer one after the other, but this
        // may read the first before the program has written the second: a copy as received waits
        // here (per buffer) for its copy as sent, so the pair stays together in the file.
        let mut received: Vec<Option<Captured>> = (0..self.buffers.len()).map(|_| None).collect();
        while out.len() < wanted {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || cancel.load(Ordering::Relaxed) {
                break;
            }
            self.buffers.wait(left.min(CANCEL_LATENCY));
            for (i, waiting) in received.iter_mut().enumerate() {
                lost += self.buffers.read(i, |sample| {
                    let Some(copy) = parse(sample, vip) else { return };
                    if out.len() >= wanted {
                        return;
                    }
                    // A copy as received whose packet was not sent (passed, dropped) goes alone.
                    if let Some(before) = waiting.take() {
                        out.push(before);
                    }
                    if copy.after {
                        out.push(copy);
                    } else {
                        *waiting = Some(copy);
                    }
                });
            }
        }
        out.extend(received.into_iter().flatten());
        out.truncate(wanted);
        // In the order the program saw them: the buffers are read CPU by CPU.
        out.sort_by_key(|c| c.at);
        (out, lost)
    }
}

/// The wall-clock time of CLOCK_MONOTONIC time `at_ns` (the data plane's clock).
fn wall_clock(at_ns: u64) -> SystemTime {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let monotonic_now = now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64;
    SystemTime::now() - Duration::from_nanos(monotonic_now.saturating_sub(at_ns))
}

fn parse(sample: &[u8], vip: u32) -> Option<Captured> {
    let meta_len = std::mem::size_of::<CaptureMeta>();
    let meta = sample.get(..meta_len)?;
    let word = |i: usize| u32::from_ne_bytes(meta[i * 4..i * 4 + 4].try_into().unwrap());
    let (stage, from_vip, len, wire_len) = (word(0), word(1), word(2) as usize, word(3));
    let at_ns = u64::from_ne_bytes(meta[16..24].try_into().unwrap());
    if from_vip != vip {
        return None;
    }
    let frame = sample.get(meta_len..meta_len + len)?.to_vec();
    let wire_len = wire_len.max(len as u32);
    Some(Captured { after: stage != CAPTURE_BEFORE, at: wall_clock(at_ns), frame, wire_len })
}

/// A pcap file (libpcap format 2.4, Ethernet link type) of `packets`.
pub fn pcap(packets: &[Captured]) -> Vec<u8> {
    const MAGIC: u32 = 0xa1b2_c3d4;
    const LINKTYPE_ETHERNET: u32 = 1;
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // GMT offset
    out.extend_from_slice(&0u32.to_le_bytes()); // timestamp accuracy
    out.extend_from_slice(&CAPTURE_SNAPLEN.to_le_bytes()); // snap length
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    for p in packets {
        let t = p.at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        out.extend_from_slice(&(t.as_secs() as u32).to_le_bytes());
        out.extend_from_slice(&t.subsec_micros().to_le_bytes());
        out.extend_from_slice(&(p.frame.len() as u32).to_le_bytes());
        // A frame cut at the limit says how long it was: readers show it as cut, not as a
        // packet shorter than its headers say.
        out.extend_from_slice(&p.wire_len.max(p.frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&p.frame);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{pcap, Captured};

    /// A frame cut at the capture limit keeps its length on the wire, and the header's snap
    /// length is the limit: readers show "packet size limited during capture".
    #[test]
    fn a_frame_over_the_limit_is_written_as_cut() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let frames = [
            Captured { after: false, at, frame: vec![0xab; 2048], wire_len: 9000 },
            Captured { after: true, at, frame: vec![0xcd; 74], wire_len: 74 },
        ];
        let out = pcap(&frames);
        let word = |at: usize| u32::from_le_bytes(out[at..at + 4].try_into().unwrap());
        assert_eq!(word(0), 0xa1b2_c3d4);
        assert_eq!(word(16), lb_common::CAPTURE_SNAPLEN, "snap length");
        assert_eq!((word(24), word(28)), (1_700_000_000, 123_456), "seconds, microseconds");
        assert_eq!((word(32), word(36)), (2048, 9000), "captured, on the wire");
        let second = 40 + 2048;
        assert_eq!((word(second + 8), word(second + 12)), (74, 74));
        assert_eq!(out.len(), second + 16 + 74);
    }
}
