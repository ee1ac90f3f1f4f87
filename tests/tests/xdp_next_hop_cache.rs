//! The data plane's next-hop cache: a FIB answer is reused while the agent's generation stands,
//! and a changed neighbour is followed once the generation moves on (lbd moves it every second).
use std::{net::IpAddr, process::Command};

use lb_common::{ConfigValue, MODE_IPIP, PROTO_TCP};
use lb_tests::{
    frames::{frame, L4},
    xdp::{
        fixture::{near4, near_mac},
        Fixture, Verdict,
    },
};
use lb_userspace::datapath::Sizes;

const SIZES: Sizes = Sizes { flows: 16_384, max_vips: 256, max_rings: 1, ring_stride: 1031, max_backends: 8 };
const NEW_MAC: [u8; 6] = [0x02, 0, 0, 0x01, 0, 0x77];

fn config(generation: u32) -> ConfigValue {
    ConfigValue { src_v4: [198, 18, 1, 254], cache_generation: generation, ..Default::default() }
}

#[test]
fn cached_next_hops_last_until_the_generation_moves_on() {
    let fx = Fixture::new();
    let ns = fx.ns.name().to_owned();
    let set_mac = |mac: [u8; 6]| {
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        let out = Command::new("ip")
            .args([
                "-n",
                &ns,
                "neigh",
                "replace",
                &near4(1).to_string(),
                "lladdr",
                &mac,
                "dev",
                "eth0",
                "nud",
                "permanent",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    fx.run(SIZES, |r| {
        r.install_ring(0, &[(1, near4(1))], 1031);
        let vip: IpAddr = [198, 18, 100, 1].into();
        let value = r.vip_value(0, 0, 1031, MODE_IPIP, 0);
        r.install_vip(vip, 80, &[PROTO_TCP], value);
        // Each packet a new flow, so nothing but the cache can carry the old answer over.
        let mut sport = 40_000;
        let mut dst_mac = |r: &mut lb_tests::xdp::XdpRunner| {
            sport += 1;
            let out = r.run(&frame([198, 18, 5, 1].into(), sport, vip, 80, L4::TcpSyn));
            assert_eq!(out.verdict, Verdict::Tx);
            <[u8; 6]>::try_from(&out.frame[..6]).unwrap()
        };

        r.set_config(config(1));
        assert_eq!(dst_mac(r), near_mac(1), "first lookup");
        set_mac(NEW_MAC);
        assert_eq!(dst_mac(r), near_mac(1), "generation 1 still stands: the cached MAC");
        r.set_config(config(2));
        assert_eq!(dst_mac(r), NEW_MAC, "generation 2: looked up again");
        set_mac(near_mac(1));
        r.set_config(config(0));
        assert_eq!(dst_mac(r), near_mac(1), "generation 0: no cache, every packet asks the FIB");
    });
}
