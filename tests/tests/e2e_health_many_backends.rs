//! Health checks of many backends under a low open-file limit (a service manager's default soft
//! limit is often 1024, here 64): lbd raises its soft limit to the hard one at start, and a
//! local error of the prober (out of descriptors, of buffers) is no backend's failure. 300
//! healthy backends checked every 100 ms, each taken out by a single failure, all stay up.
use std::{
    net::{Ipv4Addr, TcpListener},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use lb_tests::{
    lbd::{lb_namespace, Lbd, LbdFiles},
    netns::{veth, Netns},
};

const BACKENDS: u32 = 300;
const CHECK_PORT: u16 = 8080;
const WATCH: Duration = Duration::from_secs(5);

/// Backend `i`: 198.18.4.1 and on, in 198.18.4.0/22.
fn backend(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 4, 1)) + i)
}

#[test]
fn three_hundred_backends_stay_up_under_a_low_open_file_limit() {
    let ns = lb_namespace();
    let hosts = Netns::new("backends");
    veth((&ns, "eth2"), (&hosts, "eth0"));
    ns.addr("eth2", "198.18.7.254/22");
    for i in 0..BACKENDS {
        hosts.ip(&["addr", "add", &format!("{}/22", backend(i)), "dev", "eth0"]);
    }
    hosts.ip(&["link", "set", "eth0", "up"]);
    let listener = hosts.run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, CHECK_PORT))).expect("listen");

    let files = LbdFiles::new();
    let header =
        files.header(&["eth0"], "198.18.0.2", "fd00::2").replace("max_backends = 64", "max_backends = 512");
    let mut vip = format!(
        "[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = 30011\n\n\
         [vip.health]\ntype = \"tcp\"\nport = {CHECK_PORT}\ninterval_ms = 100\ntimeout_ms = 50\nrise = 2\nfall = 1\n"
    );
    for i in 0..BACKENDS {
        vip += &format!("\n[[vip.backend]]\naddress = \"{}\"\n", backend(i));
    }
    std::fs::write(files.config(), format!("{header}{vip}")).unwrap();

    let acceptor = Acceptor::start(listener);
    // A soft limit of 64 under the hard one this process has (raising a hard limit needs
    // CAP_SYS_RESOURCE, which a container may not give).
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit to write to.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
    assert!(limit.rlim_max >= 4096, "the hard open-file limit ({}) is too low for this test", limit.rlim_max);
    let nofile = format!("--nofile=64:{}", limit.rlim_max);
    let _lbd = Lbd::start_wrapped(&ns, &files, &["prlimit", &nofile], &[]);
    // Watched in the log, not through the API: an lbd out of descriptors cannot accept lbctl
    // either.
    let accepted_before = acceptor.accepted();
    std::thread::sleep(WATCH);
    let checks = acceptor.accepted() - accepted_before;
    let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
    let down: Vec<&str> = log.lines().filter(|l| l.contains("backend down")).collect();
    assert!(
        down.is_empty(),
        "{} healthy backends went down, e.g.:\n{}",
        down.len(),
        down.iter().take(3).copied().collect::<Vec<_>>().join("\n")
    );
    let expected = u64::from(BACKENDS) * WATCH.as_millis() as u64 / 100;
    assert!(
        checks > expected / 2,
        "only {checks} checks reached the backends in {WATCH:?} (about {expected} due)"
    );
    assert!(log.contains("open-file limit"), "lbd did not log its open-file limit:\n{log}");
}

/// Accepts and closes every check's connection until dropped.
struct Acceptor {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Acceptor {
    fn start(listener: TcpListener) -> Acceptor {
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (stopped, count) = (stop.clone(), accepted.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(1))
                    }
                    Err(e) => panic!("accepting checks: {e}"),
                }
            }
        });
        Acceptor { stop, accepted, thread: Some(thread) }
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
