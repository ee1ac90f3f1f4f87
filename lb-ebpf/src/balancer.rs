//! The balancer's pipeline: parse, rule out other addresses, find the flow (or match a VIP and
//! pick a backend), forward. Every packet ends in
//! exactly one verdict counter, which also decides the XDP action.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{Counter, CounterBlock, CounterKind, FAMILY_V4, PROTO_ICMP, PROTO_ICMPV6};

use crate::{flow, forward, icmp, maps::CONFIG, parse, parse::TcpKind, schedule, stats};

pub fn run(ctx: &XdpContext) -> u32 {
    let counters = stats::block();
    let verdict = match process(ctx, counters) {
        Ok(c) | Err(c) => c,
    };
    stats::add(counters, verdict);
    action(verdict)
}

#[inline(always)]
fn process(ctx: &XdpContext, counters: *mut CounterBlock) -> Result<Counter, Counter> {
    let mut pkt = parse::packet(ctx)?;
    // A VIP's packets in frames to a link-layer group go to the stack: a router forwards none.
    // (One branch for both tests: two had the verifier walk 19,000 instructions more.)
    let (vip, group) = (flow::may_be_vip(&pkt.key.dst), parse::to_link_group(ctx));
    if !vip | group {
        return Err(if !vip && pkt.fragment {
            Counter::PassFragment
        } else if !vip {
            Counter::PassNotVip
        } else {
            Counter::PassLinkGroup
        });
    }
    if pkt.fragment {
        // Only the first fragment has ports: fragments cannot be kept on one backend with their
        // connection, so none is forwarded.
        return Err(if flow::is_vip_address(&pkt.key.dst, pkt.key.family) {
            Counter::DropFragmentToVip
        } else {
            Counter::PassFragment
        });
    }
    if pkt.tcp == TcpKind::BAD {
        // No connection sends these (RFC 9293): scans, or a flood. To a VIP they go before any
        // check or flow-table work, so they spend no client's rate and take no entry.
        let vip = flow::lookup_vip(&pkt.key.dst, pkt.key.dport, pkt.key.proto, pkt.key.family);
        return Err(if vip.is_some() { Counter::DropTcpFlags } else { Counter::PassNotVip });
    }
    // ICMP of the packet's own family only: IPv6 with next header 1 (or IPv4 with 58) carries
    // no message this family's types mean (a ping answered, or an error forwarded, by mistake).
    let icmp_error = pkt.key.proto == if pkt.key.family == FAMILY_V4 { PROTO_ICMP } else { PROTO_ICMPV6 };
    if icmp_error {
        // The global deny list drops every packet of its sources to a VIP address, echo requests
        // and errors (forged "fragmentation needed" would shrink a backend's path MTU) included.
        // Not the VIPs' lists: errors come from routers on the path, not from clients.
        if crate::policy::globally_denied(&pkt.key) && flow::is_vip_address(&pkt.key.dst, pkt.key.family) {
            return Err(Counter::DropAcl);
        }
        // Echo requests end here; errors continue as a packet of the flow they quote.
        icmp::handle(ctx, &mut pkt)?;
    }
    let key = &pkt.key;
    let cfg = CONFIG.get(0).ok_or(Counter::PassNotVip)?;
    // An error must not create a flow: only the client's own packets do.
    let choice = flow::choose(key, cfg, !icmp_error, pkt.tcp == TcpKind::SYN, counters)?;
    if choice.counted {
        // An open connection of a least-conn VIP: its FIN or RST ends its count.
        schedule::closing(ctx, pkt.l4_offset, choice.entry, choice.ctl, choice.id);
    }
    let verdict = forward::to_backend(ctx, key, &choice, cfg, pkt.end - parse::ETH_LEN, icmp_error);
    if icmp_error && verdict.kind() == CounterKind::Forward {
        stats::add(counters, Counter::IcmpErrorToBackend);
    }
    Ok(verdict)
}

#[inline(always)]
fn action(verdict: Counter) -> u32 {
    match verdict.kind() {
        CounterKind::Pass => xdp_action::XDP_PASS,
        CounterKind::Drop => xdp_action::XDP_DROP,
        _ if verdict == Counter::ForwardRedirect => xdp_action::XDP_REDIRECT,
        _ => xdp_action::XDP_TX,
    }
}
