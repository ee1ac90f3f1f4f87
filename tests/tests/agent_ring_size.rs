//! A VIP's ring size changed by SIGHUP: lbd stays up, the VIP entry takes the new size, and
//! every slot the new size reaches holds the ring Maglev computes for it (no slot left from the
//! earlier ring), whether the ring shrinks or grows.
use std::time::{Duration, Instant};

use lb_tests::lbd::{lb_namespace, map_snapshot, Lbd, LbdFiles};
use lb_userspace::{agent::SavedState, maglev};

const BACKENDS: [&str; 3] = ["198.18.0.11", "198.18.0.12", "198.18.0.13"];

fn vip(ring_size: u32) -> String {
    let mut v = format!(
        "[[vip]]\nname = \"web\"\naddress = \"198.18.100.1\"\nport = 80\nprotocol = \"tcp\"\nring_size = {ring_size}\n"
    );
    for b in BACKENDS {
        v += &format!("\n  [[vip.backend]]\n  address = \"{b}\"\n");
    }
    v
}

#[test]
fn sighup_with_a_new_ring_size_keeps_lbd_running_and_rewrites_the_ring() {
    let ns = lb_namespace();
    let files = LbdFiles::new();
    let header = files.header(&["eth0"], "198.18.0.2", "fd00::2");
    let mut lbd = Lbd::start(&ns, &files, &format!("{header}{}", vip(4099)));
    let pins = files.pin_path.join(lb_common::PIN_LAYOUT);
    for size in [1009, 4099, 2003] {
        std::fs::write(files.config(), format!("{header}{}", vip(size))).unwrap();
        // SAFETY: kill with our child's pid (not reaped) and a valid signal.
        unsafe { libc::kill(lbd.process.child.id() as libc::pid_t, libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = lbd.process.child.try_wait() {
                let log = std::fs::read_to_string(files.dir.join("lbd.log")).unwrap_or_default();
                panic!("lbd exited ({status}) on SIGHUP with ring_size {size}:\n{log}");
            }
            let vips = map_snapshot(&pins, 1).vips;
            if vips.iter().any(|(_, v)| v.flags == 0 && v.ring_size == size) {
                break;
            }
            assert!(Instant::now() < deadline, "the VIP entry did not take ring_size {size}: {vips:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let state = SavedState::read(&files.dir.join("state.json")).unwrap().expect("a saved state");
        let members: Vec<maglev::Member> = BACKENDS
            .iter()
            .map(|b| {
                let address = b.parse().unwrap();
                maglev::Member::new(address, state.ids.backend("web", address).expect("an id"), 100)
            })
            .collect();
        assert_eq!(state.ids.vips["web"], 0, "the test reads ring 0");
        let held = map_snapshot(&pins, size).rings;
        let wanted = maglev::build(&members, size);
        let wrong = held.iter().zip(&wanted).filter(|(h, w)| h != w).count();
        assert_eq!(wrong, 0, "{wrong} of {size} ring slots differ from the ring of size {size}");
        lbd.lbctl_ok(&["status"]);
    }
    assert!(lbd.process.child.try_wait().unwrap().is_none(), "lbd is still running");
}
