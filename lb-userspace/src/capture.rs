//! `lbctl capture`: reads the CAPTURE perf buffers the balancer fills for one VIP while the
//! agent has capture switched on, and writes a pcap file readable by `tcpdump -r`.
use std::{
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{
    perf::{PerfEvent, PerfEventArray, PerfEventArrayBuffer},
    MapData,
};
use lb_common::{map_names, CaptureMeta, CAPTURE_BEFORE};

use crate::datapath::{Datapath, DatapathError};

/// How long [`Capturer::collect`] takes at most to see that it was cancelled.
pub const CANCEL_LATENCY: Duration = Duration::from_millis(50);

/// One copy of a frame, before (`after == false`) or after the rewrite.
pub struct Captured {
    pub after: bool,
    pub at: SystemTime,
    pub frame: Vec<u8>,
}

/// The per-CPU perf buffers, opened once at start-up.
pub struct Capturer {
    buffers: Vec<PerfEventArrayBuffer<MapData>>,
}

impl Capturer {
    pub fn open(dp: &mut Datapath) -> Result<Self, DatapathError> {
        let name = map_names::CAPTURE;
        let map = dp.ebpf.take_map(name).ok_or(DatapathError::NoMap(name))?;
        let mut array: PerfEventArray<MapData> =
            PerfEventArray::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        let cpus = aya::util::online_cpus().map_err(|(path, e)| DatapathError::Cpus(path, e))?;
        let mut buffers = Vec::new();
        for cpu in cpus {
            let buffer = array.open(cpu, Some(64)).map_err(|e| DatapathError::Capture(e.to_string()))?;
            buffers.push(buffer);
        }
        Ok(Capturer { buffers })
    }

    /// Throws away whatever earlier captures left in the buffers.
    pub fn drain(&mut self) {
        for b in &mut self.buffers {
            b.for_each(|_| {});
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
        let mut received: Vec<Option<Captured>> = self.buffers.iter().map(|_| None).collect();
        while out.len() < wanted {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || cancel.load(Ordering::Relaxed) {
                break;
            }
            let mut fds: Vec<libc::pollfd> = self
                .buffers
                .iter()
                .map(|b| libc::pollfd { fd: b.as_raw_fd(), events: libc::POLLIN, revents: 0 })
                .collect();
            let ms = left.min(CANCEL_LATENCY).as_millis() as libc::c_int;
            // SAFETY: valid pollfds that outlive the call.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            for (b, waiting) in self.buffers.iter_mut().zip(&mut received) {
                b.for_each(|event| match event {
                    PerfEvent::Sample { head, tail } => {
                        let Some(copy) = parse(head, tail, vip) else { return };
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
                    }
                    PerfEvent::Lost { count } => lost += count,
                });
            }
        }
        out.extend(received.into_iter().flatten());
        out.truncate(wanted);
        (out, lost)
    }
}

fn parse(head: &[u8], tail: &[u8], vip: u32) -> Option<Captured> {
    let mut sample = Vec::with_capacity(head.len() + tail.len());
    sample.extend_from_slice(head);
    sample.extend_from_slice(tail);
    let meta_len = std::mem::size_of::<CaptureMeta>();
    let meta = sample.get(..meta_len)?;
    let word = |i: usize| u32::from_ne_bytes(meta[i * 4..i * 4 + 4].try_into().unwrap());
    let (stage, from_vip, len) = (word(0), word(1), word(2) as usize);
    if from_vip != vip {
        return None;
    }
    let frame = sample.get(meta_len..meta_len + len)?.to_vec();
    Some(Captured { after: stage != CAPTURE_BEFORE, at: SystemTime::now(), frame })
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
    out.extend_from_slice(&65_535u32.to_le_bytes()); // snap length
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    for p in packets {
        let t = p.at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        out.extend_from_slice(&(t.as_secs() as u32).to_le_bytes());
        out.extend_from_slice(&t.subsec_micros().to_le_bytes());
        out.extend_from_slice(&(p.frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(p.frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&p.frame);
    }
    out
}
