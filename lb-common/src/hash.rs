//! The flow hash (MurmurHash3's 32-bit mixing over 32-bit words). Shared by the data plane and
//! user space so that tools and tests can predict which ring slot a flow lands on.
use crate::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Hash of the whole 5-tuple.
#[inline(always)]
pub fn flow(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, word(&key.src, 0));
    h = mix(h, word(&key.src, 4));
    h = mix(h, word(&key.src, 8));
    h = mix(h, word(&key.src, 12));
    h = mix(h, word(&key.dst, 0));
    h = mix(h, word(&key.dst, 4));
    h = mix(h, word(&key.dst, 8));
    h = mix(h, word(&key.dst, 12));
    h = mix(h, (key.sport as u32) << 16 | key.dport as u32);
    h = mix(h, key.proto as u32);
    finish(h, 40)
}

/// Hash of the client address only (client affinity).
#[inline(always)]
pub fn source(key: &FlowKey, seed: u32) -> u32 {
    let mut h = seed;
    h = mix(h, word(&key.src, 0));
    h = mix(h, word(&key.src, 4));
    h = mix(h, word(&key.src, 8));
    h = mix(h, word(&key.src, 12));
    finish(h, 16)
}

/// Another hash from a hash (MurmurHash3's finalizer of `h` and a constant): the `least-conn`
/// scheduler's second, third... ring picks for a flow.
#[inline(always)]
pub fn rehash(h: u32) -> u32 {
    finish(h ^ 0x9e37_79b9, 4)
}

/// The slot of a ring of `size` slots that hash `hash` picks (0 for an empty ring). Every
/// scheduler's ring pick and every test that predicts one use it. The remainder, not a cheaper
/// multiply-and-shift: hosts behind one ECMP group must pick alike across versions too (a
/// rolling upgrade moves flows between old and new hosts, and equal ring fingerprints promise
/// equal picks, docs/ecmp-bird.md). Checked: the data plane must hold no division-by-zero
/// panic, which the verifier refuses.
#[inline(always)]
pub fn ring_slot(hash: u32, size: u32) -> u32 {
    hash.checked_rem(size).unwrap_or(0)
}

/// The VIP_FILTER bit of a destination address (the 16-byte form of keys): its four 32-bit words
/// folded and scattered by a multiplication (Fibonacci hashing), the top bits kept. A few ALU
/// operations: it runs on every packet, most of which are for other addresses.
#[inline(always)]
pub fn vip_filter_bit(addr: &[u8; 16]) -> u32 {
    let folded = word(addr, 0)
        ^ word(addr, 4).rotate_left(8)
        ^ word(addr, 8).rotate_left(16)
        ^ word(addr, 12).rotate_left(24);
    folded.wrapping_mul(0x9e37_79b1) >> (32 - crate::limits::VIP_FILTER_BITS.trailing_zeros())
}

/// The two flow-table sets of `key` among `sets` (lb-common/src/flow.rs): its first choice and
/// its second. Each of the key's five 64-bit words multiplied by its own odd constant, summed
/// with the seed, then mixed once more; each half of the result scaled to `sets` (a
/// multiplication, no division: any set count). Multiplying before combining keeps every
/// field's bits apart: keys of structured clients (one /16 with sequential addresses, one NAT
/// address with sequential ports) spread as random ones do (a test measures it). Five
/// independent multiplications: it runs on every packet. The seed (the flow hash's) keeps
/// clients from aiming their flows at one set.
#[inline(always)]
pub fn flow_sets(key: &FlowKey, seed: u32, sets: u32) -> (u32, u32) {
    let w = words(key);
    let h = w[0]
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(w[1].wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .wrapping_add(w[2].wrapping_mul(0x1656_67b1_9e37_79f9))
        .wrapping_add(w[3].wrapping_mul(0x85eb_ca77_c2b2_ae63))
        .wrapping_add(w[4].wrapping_mul(0x27d4_eb2f_1656_67c5))
        .wrapping_add(seed as u64);
    let h = (h ^ (h >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    let h = h ^ (h >> 29);
    let scale = |half: u64| ((half * sets as u64) >> 32) as u32;
    (scale(h >> 32), scale(h & 0xffff_ffff))
}

/// A flow key as 64-bit words (no byte-wise reads: the data plane loads whole words).
#[inline(always)]
pub fn words(key: &FlowKey) -> &[u64; 5] {
    const _: () = assert!(core::mem::size_of::<FlowKey>() == 40 && core::mem::align_of::<FlowKey>() == 8);
    // SAFETY: same size, FlowKey is 8-byte aligned, and every byte of it is an integer field.
    unsafe { &*(key as *const FlowKey as *const [u64; 5]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_changes_the_flow_hash_and_only_the_source_changes_the_source_hash() {
        let base = FlowKey { src: [1; 16], dst: [2; 16], sport: 3, dport: 4, proto: 6, ..Default::default() };
        let variants = [
            FlowKey { src: [9; 16], ..base },
            FlowKey { dst: [9; 16], ..base },
            FlowKey { sport: 9, ..base },
            FlowKey { dport: 9, ..base },
            FlowKey { proto: 17, ..base },
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(flow(v, 7), flow(&base, 7), "variant {i}");
            assert_eq!(source(v, 7) == source(&base, 7), i != 0, "variant {i}");
        }
        assert_ne!(flow(&base, 7), flow(&base, 8), "the seed matters");
    }

    #[test]
    fn ring_slots_cover_the_ring_evenly() {
        let size = 65_537u32;
        let mut hits = std::vec![0u32; size as usize];
        for f in 0..(size * 20) {
            let key = FlowKey {
                src: [1; 16],
                dst: [2; 16],
                sport: f as u16,
                dport: (f >> 16) as u16,
                ..Default::default()
            };
            let slot = ring_slot(flow(&key, 7), size);
            assert!(slot < size);
            hits[slot as usize] += 1;
        }
        // 20 a slot on average: a slot no flow picks, or one that 60 pick, is no accident.
        let (min, max) = (hits.iter().min().unwrap(), hits.iter().max().unwrap());
        assert!(*min > 0 && *max < 60, "slots picked {min} to {max} times");
        assert_eq!(ring_slot(size + 5, size), 5, "the remainder (as every earlier version picked)");
        assert_eq!(ring_slot(7, 0), 0, "an empty ring");
    }

    #[test]
    fn rehash_gives_a_different_hash() {
        let h = flow(&FlowKey::default(), 1);
        assert_ne!(rehash(h), h);
        assert_ne!(rehash(rehash(h)), rehash(h));
    }

    #[test]
    fn vip_filter_bits_spread_neighbouring_addresses() {
        for v6 in [false, true] {
            let mut seen = [false; crate::limits::VIP_FILTER_BITS as usize];
            let mut distinct = 0;
            for i in 0..1024u32 {
                let mut addr = [0u8; 16];
                if v6 {
                    addr[..2].copy_from_slice(&[0xfd, 0]);
                    addr[14..].copy_from_slice(&(i as u16).to_be_bytes());
                } else {
                    addr[..4].copy_from_slice(&[198, 18, (i >> 8) as u8, i as u8]);
                }
                let bit = vip_filter_bit(&addr) as usize;
                distinct += !seen[bit] as u32;
                seen[bit] = true;
            }
            // Random placement would give about 1016 distinct bits.
            assert!(distinct >= 1000, "v6 {v6}: 1024 addresses on {distinct} bits");
        }
    }

    extern crate std;
    use std::collections::{BTreeSet, HashSet};

    fn v4(a: [u8; 4]) -> [u8; 16] {
        crate::backend::v4_in_16(a)
    }

    /// Flow number -> its key, for a VIP address.
    type Shape = fn(u32, [u8; 16]) -> FlowKey;

    fn key(src: [u8; 16], dst: [u8; 16], sport: u16) -> FlowKey {
        FlowKey { src, dst, sport, dport: 80, proto: 6, family: crate::FAMILY_V4, _pad: [0; 2] }
    }

    #[test]
    fn structured_clients_spread_over_the_flow_table_as_random_ones_do() {
        let sets = 1 << 16;
        let vip = v4([198, 18, 100, 1]);
        let shapes: [(&str, Shape); 4] = [
            ("one /16, sequential addresses and ports", |f, vip| {
                let a = 1 + (f >> 14) % 32768;
                key(v4([198, 19, (a >> 8) as u8, a as u8]), vip, (1024 + f % 16384) as u16)
            }),
            ("one /16, sequential addresses, one port", |f, vip| {
                key(v4([198, 19, (f >> 8) as u8, f as u8]), vip, 40_000)
            }),
            ("a NAT gateway: one address, sequential ports", |f, vip| {
                let mut dst = vip;
                dst[3] = 1 + (f / 64_000) as u8;
                key(v4([198, 18, 0, 1]), dst, (1024 + f % 64_000) as u16)
            }),
            ("random", |f, vip| {
                let x = u64::from(f)
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .rotate_left(17)
                    .wrapping_mul(0xbf58_476d_1ce4_e5b9);
                key(v4((x as u32).to_be_bytes()), vip, (x >> 32) as u16)
            }),
        ];
        for n in [10_000u32, 60_000] {
            // Where n keys thrown at random land: m(1 - e^(-n/m)) distinct slots of m.
            let m = f64::from(sets);
            let random = m * (1.0 - (-f64::from(n) / m).exp());
            for (name, shape) in shapes {
                let keys: HashSet<FlowKey> = (0..n).map(|f| shape(f, vip)).collect();
                assert_eq!(keys.len(), n as usize, "{name}: the shape repeats keys");
                let slots: BTreeSet<u32> = keys.iter().map(|k| flow_sets(k, 7, sets).0).collect();
                let ratio = slots.len() as f64 / random;
                assert!(
                    ratio > 0.98,
                    "{name}: {n} flows on {} sets, {random:.0} expected at random",
                    slots.len()
                );
                let second: BTreeSet<u32> = keys.iter().map(|k| flow_sets(k, 7, sets).1).collect();
                let ratio = second.len() as f64 / random;
                assert!(ratio > 0.98, "{name}: {n} flows on {} second sets", second.len());
            }
        }
    }
}
