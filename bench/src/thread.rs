//! Running the calling thread inside a bench's network namespace, on one CPU.
use std::{fs::File, os::fd::AsRawFd};

use lb_tests::netns::Netns;

/// The calling thread in `ns`, pinned to `cpu`, until dropped (back to where it was).
pub struct ThreadIn {
    home: File,
}

impl ThreadIn {
    pub fn enter(ns: &Netns, cpu: usize) -> Self {
        let home = File::open("/proc/thread-self/ns/net").expect("open this thread's namespace");
        ns.enter_current_thread();
        // SAFETY: a zeroed cpu_set_t with one CPU set, passed with its size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
        }
        ThreadIn { home }
    }
}

impl Drop for ThreadIn {
    fn drop(&mut self) {
        // SAFETY: setns with a namespace fd we opened.
        unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}
