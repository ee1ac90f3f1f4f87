//! The CAPTURE perf buffers (one per online CPU), read as byte samples.
use std::{os::fd::AsRawFd, time::Duration};

use aya::maps::{
    perf::{PerfEvent, PerfEventArray, PerfEventArrayBuffer},
    MapData,
};
use lb_common::map_names;

use super::{Datapath, DatapathError};

/// Pages of each CPU's buffer.
const PAGES: usize = 64;

pub struct CaptureBuffers {
    buffers: Vec<PerfEventArrayBuffer<MapData>>,
}

impl CaptureBuffers {
    /// Takes the CAPTURE map out of `dp` and opens a buffer per online CPU.
    pub fn open(dp: &mut Datapath) -> Result<Self, DatapathError> {
        let name = map_names::CAPTURE;
        let map = dp.ebpf.take_map(name).ok_or(DatapathError::NoMap(name))?;
        let mut array: PerfEventArray<MapData> =
            PerfEventArray::try_from(map).map_err(|source| DatapathError::Map { name, source })?;
        let cpus = aya::util::online_cpus().map_err(|(path, e)| DatapathError::Cpus(path, e))?;
        let buffers = cpus
            .into_iter()
            .map(|cpu| array.open(cpu, Some(PAGES)).map_err(|e| DatapathError::Capture(e.to_string())))
            .collect::<Result<_, _>>()?;
        Ok(CaptureBuffers { buffers })
    }

    /// How many buffers (CPUs) there are.
    pub fn len(&self) -> usize {
        self.buffers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffers.is_empty()
    }

    /// Waits until a buffer has something to read, at most `timeout`.
    pub fn wait(&self, timeout: Duration) {
        let mut fds: Vec<libc::pollfd> = self
            .buffers
            .iter()
            .map(|b| libc::pollfd { fd: b.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
        // SAFETY: valid pollfds that outlive the call.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    }

    /// Hands every sample waiting in buffer `i` to `sample` (in the order the CPU wrote them);
    /// returns how many the kernel lost.
    pub fn read(&mut self, i: usize, mut sample: impl FnMut(&[u8])) -> u64 {
        let mut lost = 0;
        let mut bytes = Vec::new();
        self.buffers[i].for_each(|event| match event {
            PerfEvent::Sample { head, tail } => {
                bytes.clear();
                bytes.extend_from_slice(head);
                bytes.extend_from_slice(tail);
                sample(&bytes);
            }
            PerfEvent::Lost { count } => lost += count,
        });
        lost
    }
}
