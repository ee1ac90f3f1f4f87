//! Runs the embedded XDP programs on frames with `BPF_PROG_TEST_RUN`: no interface, no traffic,
//! the real verifier-checked program and its real maps (fresh for every runner).
//!
//! The balancer looks routes and neighbours up (`bpf_fib_lookup`) in the network namespace of
//! the thread that starts the test run, for the ingress device named in the run's `xdp_md`.
//! [`Fixture`] builds a namespace where those answers are fixed, so expected output frames can
//! be written down byte for byte.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{BackendValue, ConfigValue, Counter, TrafficStats, VipKey, VipValue};
use lb_userspace::{
    datapath::{self, Datapath, Sizes},
    maglev::{self, Member},
};

use crate::{frames, netns::Netns};

/// What an XDP program decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
}

impl Verdict {
    fn from_action(action: u32) -> Self {
        match action {
            0 => Verdict::Aborted,
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            4 => Verdict::Redirect,
            other => panic!("XDP program returned {other}, which is no XDP action"),
        }
    }
}

/// The verdict and the frame as the program left it.
#[derive(Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    pub frame: Vec<u8>,
}

/// Room for headers a program may push in front of the frame (encapsulation).
const HEADROOM: usize = 256;

/// One loaded copy of the programs with their own maps.
pub struct XdpRunner {
    pub datapath: Datapath,
    program: &'static str,
    /// The device the program sees the frames arrive on (`xdp_md.ingress_ifindex`), in the
    /// namespace of the thread that runs them. 0: none given (the kernel then uses loopback).
    pub ingress_ifindex: u32,
}

impl XdpRunner {
    /// Loads the balancer program (the kernel verifies it here) with the default map sizes.
    pub fn balancer() -> Self {
        Self::balancer_with(Sizes::default())
    }

    /// Loads the balancer with map sizes of the test's choosing (small ones load faster).
    pub fn balancer_with(sizes: Sizes) -> Self {
        Self::new(datapath::BALANCER, sizes)
    }

    /// Loads the decap program alone, as a backend host does (the balancer's maps at their
    /// smallest, the balancer not loaded).
    pub fn decap() -> Self {
        crate::privilege::require_root();
        let datapath = datapath::load_decap().unwrap_or_else(|e| panic!("loading the decap program: {e}"));
        XdpRunner { datapath, program: datapath::DECAP, ingress_ifindex: 0 }
    }

    fn new(program: &'static str, sizes: Sizes) -> Self {
        crate::privilege::require_root();
        let datapath = datapath::load_with(sizes).unwrap_or_else(|e| panic!("loading the XDP programs: {e}"));
        XdpRunner { datapath, program, ingress_ifindex: 0 }
    }

    /// Runs the program once on `frame` (at least 14 bytes, the least the kernel accepts).
    pub fn run(&mut self, frame: &[u8]) -> Outcome {
        let (outcome, _) = self.run_repeat(frame, 1);
        outcome
    }

    /// Runs the program `repeat` times on the same input and returns the outcome of the last run
    /// and the kernel's mean time per run. Beware: each run starts from `frame` again, so this
    /// measures one packet class, not a flow of changing packets.
    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> (Outcome, Duration) {
        let ctx = (self.ingress_ifindex != 0).then(|| xdp_md(frame.len(), self.ingress_ifindex));
        let prog = datapath::program(self.datapath.raw_mut(), self.program).expect("program");
        let mut out = vec![0u8; frame.len() + HEADROOM];
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: ctx.as_ref().map(|c| &c[..]),
                repeat,
                ..Default::default()
            })
            .unwrap_or_else(|e| {
                panic!(
                    "BPF_PROG_TEST_RUN on a {}-byte frame (ingress {}): {e}",
                    frame.len(),
                    self.ingress_ifindex
                )
            });
        out.truncate(result.data_size_out as usize);
        let outcome = Outcome { verdict: Verdict::from_action(result.return_value), frame: out };
        (outcome, result.duration)
    }

    /// A global counter summed over CPUs.
    pub fn counter(&self, counter: Counter) -> u64 {
        self.datapath.counter(counter).unwrap_or_else(|e| panic!("reading {}: {e}", counter.name()))
    }

    /// All global counters, in `Counter::ALL` order.
    pub fn counters(&self) -> Vec<u64> {
        Counter::ALL.iter().map(|c| self.counter(*c)).collect()
    }

    /// VIP_STATS[id], summed over CPUs.
    pub fn vip_stats(&self, id: u32) -> TrafficStats {
        self.datapath.vip_stats(id).unwrap_or_else(|e| panic!("reading the stats of VIP {id}: {e}"))
    }

    /// BACKEND_STATS[id], summed over CPUs.
    pub fn backend_stats(&self, id: u32) -> TrafficStats {
        self.datapath.backend_stats(id).unwrap_or_else(|e| panic!("reading the stats of backend {id}: {e}"))
    }

    /// Sets backends `(id, address)` and writes ring number `ring` as a Maglev table of `size`
    /// slots over them (all of weight 1), as the agent does. Returns the table.
    pub fn install_ring(&mut self, ring: u32, backends: &[(u32, IpAddr)], size: u32) -> Vec<u32> {
        for &(id, addr) in backends {
            self.datapath
                .set_backend(id, BackendValue::from(addr).taking_new_flows(true))
                .unwrap_or_else(|e| panic!("backend {id}: {e}"));
        }
        let members: Vec<Member> = backends.iter().map(|&(id, addr)| Member::new(addr, id, 1)).collect();
        let table = maglev::build(&members, size);
        self.write_ring(ring, None, &table);
        table
    }

    /// Writes ring number `ring` in place (only the slots that differ from `old`).
    pub fn write_ring(&mut self, ring: u32, old: Option<&[u32]>, new: &[u32]) -> usize {
        self.datapath.write_ring(ring, old, new).unwrap_or_else(|e| panic!("writing ring {ring}: {e}"))
    }

    /// A VIP value for ring number `ring` of `size` slots.
    pub fn vip_value(&self, id: u32, ring: u32, size: u32, mode: u8, flags: u32) -> VipValue {
        VipValue {
            id,
            flags,
            ring_offset: self.datapath.ring_offset(ring),
            ring_size: size,
            mode,
            scheduler: lb_common::SCHED_MAGLEV,
            rr_len: 0,
        }
    }

    /// Adds `addr:port` for each protocol in `protos`, all with `value`.
    pub fn install_vip(&mut self, addr: IpAddr, port: u16, protos: &[u8], value: VipValue) {
        for &proto in protos {
            self.datapath
                .set_vip(VipKey::from((addr, port, proto)), value)
                .unwrap_or_else(|e| panic!("VIP {addr}:{port}/{proto}: {e}"));
        }
    }

    /// Adds the address entry of VIP address `addr` (answers pings, drops fragments), with the
    /// same id and ring as `value`.
    pub fn install_address_entry(&mut self, addr: IpAddr, value: VipValue) {
        let proto = if addr.is_ipv4() { lb_common::PROTO_ICMP } else { lb_common::PROTO_ICMPV6 };
        let value = VipValue { flags: lb_common::VIP_ADDRESS_ONLY, ..value };
        self.datapath
            .set_vip(VipKey::from((addr, 0, proto)), value)
            .unwrap_or_else(|e| panic!("address entry of {addr}: {e}"));
    }

    pub fn set_config(&mut self, config: ConfigValue) {
        self.datapath.set_config(config).unwrap_or_else(|e| panic!("config: {e}"));
    }

    /// Lets the balancer redirect out of `ifindex`. Call it from a thread in the namespace of
    /// the interface (the kernel resolves the index there).
    pub fn add_tx_port(&mut self, ifindex: u32) {
        self.datapath.add_tx_port(ifindex).unwrap_or_else(|e| panic!("TX port {ifindex}: {e}"));
    }
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it: data 0 and data_end = frame length (the
/// kernel insists), data_meta 0, ingress_ifindex, rx_queue_index 0, egress_ifindex 0.
pub fn xdp_md(len: usize, ingress_ifindex: u32) -> [u8; 24] {
    let fields = [0, len as u32, 0, ingress_ifindex, 0, 0];
    let mut out = [0u8; 24];
    for (chunk, field) in out.chunks_exact_mut(4).zip(fields) {
        chunk.copy_from_slice(&field.to_ne_bytes());
    }
    out
}

/// A namespace whose routes and neighbours are fixed, for the balancer's FIB lookups:
///
/// ```text
///   eth0 02:00:00:00:00:02  198.18.1.254/24 fd00:1::fe/64   <- frames come in here
///     backends 198.18.1.N / fd00:1::N (N = 1..=16), MAC 02:00:00:01:00:N, permanent
///     gateway  198.18.1.200 / fd00:1::c8,           MAC 02:00:00:01:00:c8, permanent
///     routes   198.18.3.0/24, fd00:3::/64 via the gateway
///              198.18.4.0/24, fd00:4::/64 via the gateway, MTU 1400 locked (`narrow4`, `narrow6`;
///              forwarding uses a route MTU only when locked: otherwise the device MTU)
///     on-link  198.18.1.99 / fd00:1::99 with no neighbour entry (FIB lookup fails)
///   eth1 02:00:00:00:00:03  198.18.2.254/24 fd00:2::fe/64   (eth0's veth peer)
///     backends 198.18.2.N / fd00:2::N (N = 1..=4), MAC 02:00:00:02:00:N, permanent
///   no route at all to 198.19.0.0/16 or fd00:99::/64
/// ```
///
/// Forwarding is on (bpf_fib_lookup refuses to answer otherwise).
pub struct Fixture {
    pub ns: Netns,
    pub eth0: u32,
    pub eth1: u32,
}

pub mod fixture {
    //! Addresses and MACs of the [`Fixture`](super::Fixture) namespace.
    use super::*;

    pub const ETH0_MAC: [u8; 6] = frames::LB_MAC;
    pub const ETH1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
    pub const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0x01, 0, 0xc8];
    /// Backends on eth0 (TX): `near4(n)`, `near6(n)` for n in 1..=16.
    pub const NEAR: u8 = 16;
    /// Backends on eth1 (redirect): n in 1..=4.
    pub const FAR: u8 = 4;

    pub fn near4(n: u8) -> IpAddr {
        Ipv4Addr::new(198, 18, 1, n).into()
    }
    pub fn near6(n: u8) -> IpAddr {
        Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, n.into()).into()
    }
    pub fn far4(n: u8) -> IpAddr {
        Ipv4Addr::new(198, 18, 2, n).into()
    }
    pub fn far6(n: u8) -> IpAddr {
        Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, n.into()).into()
    }
    /// Behind the gateway on eth0.
    pub fn routed4(n: u8) -> IpAddr {
        Ipv4Addr::new(198, 18, 3, n).into()
    }
    pub fn routed6(n: u8) -> IpAddr {
        Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, n.into()).into()
    }
    /// Behind the gateway on eth0, by a route of MTU [`NARROW_MTU`].
    pub fn narrow4(n: u8) -> IpAddr {
        Ipv4Addr::new(198, 18, 4, n).into()
    }
    pub fn narrow6(n: u8) -> IpAddr {
        Ipv6Addr::new(0xfd00, 4, 0, 0, 0, 0, 0, n.into()).into()
    }
    pub const NARROW_MTU: u16 = 1400;
    /// On eth0's subnet, but with no neighbour entry.
    pub const NO_NEIGH4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 99);
    pub const NO_NEIGH6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0x99);
    /// No route.
    pub const NO_ROUTE4: Ipv4Addr = Ipv4Addr::new(198, 19, 99, 1);
    pub const NO_ROUTE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 99, 0, 0, 0, 0, 0, 1);

    pub fn near_mac(n: u8) -> [u8; 6] {
        [0x02, 0, 0, 0x01, 0, n]
    }
    pub fn far_mac(n: u8) -> [u8; 6] {
        [0x02, 0, 0, 0x02, 0, n]
    }

    /// Where the FIB sends packets for `backend`: (egress is eth1, next-hop MAC). None: the
    /// lookup fails.
    pub fn next_hop(backend: IpAddr) -> Option<(bool, [u8; 6])> {
        let (net, host) = match backend {
            IpAddr::V4(a) => {
                let o = a.octets();
                if o[..2] != [198, 18] {
                    return None;
                }
                (o[2] as u16, o[3] as u16)
            }
            IpAddr::V6(a) => {
                let s = a.segments();
                if s[0] != 0xfd00 || s[2..7] != [0; 5] {
                    return None;
                }
                (s[1], s[7])
            }
        };
        match (net, host) {
            (1, 1..=16) | (1, 200) => Some((false, near_mac(host as u8))),
            (2, 1..=4) => Some((true, far_mac(host as u8))),
            (3, _) | (4, _) => Some((false, GATEWAY_MAC)),
            _ => None,
        }
    }
}

impl Fixture {
    pub fn new() -> Self {
        use fixture::*;
        let ns = Netns::new("fib");
        let mac = |m: [u8; 6]| m.map(|b| format!("{b:02x}")).join(":");
        ns.ip(&[
            "link",
            "add",
            "eth0",
            "address",
            &mac(ETH0_MAC),
            "type",
            "veth",
            "peer",
            "name",
            "eth1",
            "address",
            &mac(ETH1_MAC),
        ]);
        ns.addr("eth0", "198.18.1.254/24");
        ns.addr("eth0", "fd00:1::fe/64");
        ns.addr("eth1", "198.18.2.254/24");
        ns.addr("eth1", "fd00:2::fe/64");
        // Packet tests run the programs without lbd, which would own these on a host: fixed
        // answers (forwarding on, permanent neighbours) so expected frames are exact.
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        let mut batch = String::new();
        let mut neigh = |addr: IpAddr, m: [u8; 6], dev: &str| {
            batch += &format!("neigh replace {addr} lladdr {} dev {dev} nud permanent\n", mac(m));
        };
        for n in 1..=NEAR {
            neigh(near4(n), near_mac(n), "eth0");
            neigh(near6(n), near_mac(n), "eth0");
        }
        for n in 1..=FAR {
            neigh(far4(n), far_mac(n), "eth1");
            neigh(far6(n), far_mac(n), "eth1");
        }
        neigh(near4(200), GATEWAY_MAC, "eth0");
        neigh(near6(200), GATEWAY_MAC, "eth0");
        batch += "route add 198.18.3.0/24 via 198.18.1.200 dev eth0\n";
        batch += "route add fd00:3::/64 via fd00:1::c8 dev eth0\n";
        batch += &format!("route add 198.18.4.0/24 via 198.18.1.200 dev eth0 mtu lock {NARROW_MTU}\n");
        batch += &format!("route add fd00:4::/64 via fd00:1::c8 dev eth0 mtu lock {NARROW_MTU}\n");
        let file = std::env::temp_dir().join(format!("{}.ip-batch", ns.name()));
        std::fs::write(&file, &batch).expect("write the ip batch file");
        let result = std::process::Command::new("ip").args(["-n", ns.name(), "-batch"]).arg(&file).output();
        let _ = std::fs::remove_file(&file);
        let out = result.expect("run ip -batch");
        assert!(out.status.success(), "ip -batch failed: {}\n{batch}", String::from_utf8_lossy(&out.stderr));
        let (eth0, eth1) = (ns.ifindex("eth0"), ns.ifindex("eth1"));
        Fixture { ns, eth0, eth1 }
    }

    /// Loads a fresh balancer with `sizes` and runs `f` with it on a thread inside the namespace,
    /// pinned to one CPU (the flow table is per CPU: a flow must come back on the CPU that saw it
    /// first), with frames arriving on eth0.
    pub fn run<T: Send>(&self, sizes: Sizes, f: impl FnOnce(&mut XdpRunner) -> T + Send) -> T {
        self.ns.run(|| {
            pin_to_current_cpu();
            let mut runner = XdpRunner::balancer_with(sizes);
            runner.ingress_ifindex = self.eth0;
            f(&mut runner)
        })
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

/// Pins the calling thread to the CPU it is running on.
fn pin_to_current_cpu() {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    assert!(cpu >= 0, "sched_getcpu: {}", std::io::Error::last_os_error());
    pin_to_cpu(cpu as usize);
}

/// Moves the calling thread to `cpu` (BPF_PROG_TEST_RUN runs a program on the caller's CPU).
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: the cpu_set_t is zeroed then filled with CPU_SET before being passed by pointer
    // with its exact size.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(rc, 0, "moving the thread to CPU {cpu}: {}", std::io::Error::last_os_error());
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; the kernel fills it, CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let rc = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        assert_eq!(rc, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
        (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect()
    }
}
