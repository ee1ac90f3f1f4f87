//! The status page's history: one sample a second of packets/s, bits/s and new flows/s per VIP
//! and per backend, and packets/s per drop reason, over the last [`WINDOW`] seconds. lbd's event
//! loop takes a sample on its 1-second tick ([`Samples::record`]) from the counters it reads
//! anyway; nothing is counted twice. Rates come from the difference of two readings over the
//! time between them, so a late tick still gives the right rate.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Mutex,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use lb_common::{Counter, CounterKind};
use serde::Serialize;

use crate::agent::Stats;

/// Samples kept: 15 minutes of 1-second samples.
pub const WINDOW: usize = 900;
/// Series that keep a history, at most (VIPs first, then drop reasons, then backends, in the
/// config's order): 12 bytes a sample, about 11 MB in all. The others show their latest rates.
pub const MAX_SERIES: usize = 1024;

/// What a series is of.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Vip(String),
    /// (VIP, backend address)
    Backend(String, String),
    /// The reason of a drop counter, as the metrics label it (`no_backend`).
    Drop(&'static str),
}

/// Rates over one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Packets per second.
    pub pps: f64,
    /// Bits per second (frames as received).
    pub bps: f64,
    /// New flows per second.
    pub fps: f64,
}

/// One reading of the counters: (packets, bytes, new flows) per key.
struct Reading {
    at: Instant,
    totals: Vec<(Key, [u64; 3])>,
}

impl Reading {
    fn of(stats: &Stats, at: Instant) -> Reading {
        let mut totals = Vec::new();
        for v in &stats.vips {
            totals.push((Key::Vip(v.name.clone()), [v.packets, v.bytes, v.new_flows]));
        }
        for (reason, value) in drops(stats) {
            totals.push((Key::Drop(reason), [value, 0, 0]));
        }
        for v in &stats.vips {
            for b in &v.backends {
                totals.push((
                    Key::Backend(v.name.clone(), b.address.clone()),
                    [b.packets, b.bytes, b.new_flows],
                ));
            }
        }
        Reading { at, totals }
    }

    /// The rates from `before` to this reading, per key read both times; none for a counter that
    /// went back (a backend id given to another backend starts from zero).
    fn rates_since(&self, before: &Reading) -> Vec<(Key, Rates)> {
        let secs = (self.at - before.at).as_secs_f64();
        if secs <= 0.0 {
            return Vec::new();
        }
        let old: HashMap<&Key, &[u64; 3]> = before.totals.iter().map(|(k, t)| (k, t)).collect();
        self.totals
            .iter()
            .filter_map(|(key, now)| {
                let was = old.get(key)?;
                let delta = |i: usize| now[i].checked_sub(was[i]).map(|d| d as f64 / secs);
                Some((key.clone(), Rates { pps: delta(0)?, bps: delta(1)? * 8.0, fps: delta(2)? }))
            })
            .collect()
    }
}

/// The drop counters, each with its reason as the metrics label it (`no_backend`).
fn drop_counters() -> impl Iterator<Item = (Counter, &'static str)> {
    Counter::ALL
        .iter()
        .filter(|c| c.kind() == CounterKind::Drop)
        .map(|&c| (c, crate::metrics::verdict(c).map_or(c.name(), |(_, reason)| reason)))
}

/// The drop counters' values by reason.
fn drops(stats: &Stats) -> impl Iterator<Item = (&'static str, u64)> + '_ {
    drop_counters().map(|(c, reason)| {
        let value = stats.counters.iter().find(|(name, _)| name == c.name()).map_or(0, |(_, v)| *v);
        (reason, value)
    })
}

/// One series: a rate triple per sample, aligned with [`History::times`] (NaN: no value then).
struct Series {
    values: VecDeque<[f32; 3]>,
    /// When it last had a value: a series with none in the window is forgotten.
    last_seen: f64,
}

#[derive(Default)]
struct History {
    last: Option<Reading>,
    /// Each sample's time, seconds since the Unix epoch, oldest first.
    times: VecDeque<f64>,
    series: BTreeMap<Key, Series>,
    /// Every key's rates at the last sample (with or without a history).
    latest: HashMap<Key, Rates>,
    /// Keys of the last sample that got no history ([`MAX_SERIES`]).
    omitted: usize,
}

/// The status page's samples; shared by the event loop (writer) and the page's requests.
#[derive(Default)]
pub struct Samples {
    history: Mutex<History>,
}

impl Samples {
    /// Takes a sample from `stats`, read now. The first reading only sets the base of the next.
    pub fn record(&self, stats: &Stats) {
        // Whole milliseconds: a JSON parser that rounds its last digit (serde_json's default)
        // still reads back the time a client passes as `after=` exactly.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_millis() as f64 / 1000.0);
        self.record_at(stats, Instant::now(), now);
    }

    fn record_at(&self, stats: &Stats, at: Instant, unix: f64) {
        let reading = Reading::of(stats, at);
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let Some(before) = h.last.replace(reading) else { return };
        let rates = h.last.as_ref().expect("just set").rates_since(&before);
        h.push(unix, rates);
    }

    /// The latest rates of `key`; `None` before two readings, or if it has none (new, or its
    /// counter went back).
    pub fn latest(&self, key: &Key) -> Option<Rates> {
        self.history.lock().unwrap_or_else(|e| e.into_inner()).latest.get(key).copied()
    }

    /// The latest packets/s of each drop reason, in the counters' order.
    pub fn latest_drops(&self) -> Vec<(&'static str, Rates)> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        drop_counters().filter_map(|(_, r)| h.latest.get(&Key::Drop(r)).map(|rates| (r, *rates))).collect()
    }

    /// The samples taken after `after` (seconds since the Unix epoch; 0: all of them).
    pub fn since(&self, after: f64) -> SamplesView {
        self.history.lock().unwrap_or_else(|e| e.into_inner()).view(after)
    }
}

impl History {
    fn push(&mut self, unix: f64, rates: Vec<(Key, Rates)>) {
        let n = self.times.len();
        self.times.push_back(unix);
        let mut fresh: HashMap<&Key, [f32; 3]> = HashMap::new();
        for (key, r) in &rates {
            fresh.insert(key, [r.pps as f32, r.bps as f32, r.fps as f32]);
        }
        for (key, series) in &mut self.series {
            match fresh.remove(key) {
                Some(v) => {
                    series.values.push_back(v);
                    series.last_seen = unix;
                }
                None => series.values.push_back([f32::NAN; 3]),
            }
        }
        // New keys, in the reading's order (VIPs, drops, backends), while there is room.
        self.omitted = 0;
        for (key, _) in &rates {
            let Some(v) = fresh.remove(key) else { continue };
            if self.series.len() >= MAX_SERIES {
                self.omitted += 1;
                continue;
            }
            let mut values: VecDeque<[f32; 3]> = std::iter::repeat_n([f32::NAN; 3], n).collect();
            values.push_back(v);
            self.series.insert(key.clone(), Series { values, last_seen: unix });
        }
        if self.times.len() > WINDOW {
            self.times.pop_front();
            let oldest = self.times.front().copied().unwrap_or(unix);
            self.series.retain(|_, s| {
                s.values.pop_front();
                s.last_seen >= oldest
            });
        }
        self.latest = rates.into_iter().collect();
    }

    fn view(&self, after: f64) -> SamplesView {
        let skip = self.times.iter().take_while(|&&t| t <= after).count();
        let column = |values: &VecDeque<[f32; 3]>, i: usize| -> Vec<Option<f32>> {
            values.iter().skip(skip).map(|v| Some(v[i]).filter(|x| x.is_finite()).map(round)).collect()
        };
        let triple = |s: &Series| SeriesView {
            pps: column(&s.values, 0),
            bps: column(&s.values, 1),
            fps: column(&s.values, 2),
        };
        let mut vips: Vec<VipSeries> = Vec::new();
        let mut drops = Vec::new();
        for (key, s) in &self.series {
            match key {
                Key::Vip(name) => {
                    vips.push(VipSeries { name: name.clone(), rates: triple(s), backends: Vec::new() })
                }
                Key::Drop(reason) => drops.push(DropSeries { reason, pps: column(&s.values, 0) }),
                Key::Backend(..) => {}
            }
        }
        for (key, s) in &self.series {
            let Key::Backend(vip, address) = key else { continue };
            if let Some(v) = vips.iter_mut().find(|v| &v.name == vip) {
                v.backends.push(BackendSeries { address: address.clone(), rates: triple(s) });
            }
        }
        SamplesView {
            interval_seconds: 1,
            window: WINDOW,
            t: self.times.iter().skip(skip).copied().collect(),
            vips,
            drops,
            omitted: self.omitted,
        }
    }
}

/// Three significant digits are what a chart shows; fewer digits, a smaller answer.
fn round(x: f32) -> f32 {
    if x == 0.0 {
        return 0.0;
    }
    let x = f64::from(x);
    // Divide by a whole power of ten rather than multiply by a fraction: 800000 stays exact.
    let digits = 2 - x.abs().log10().floor() as i32;
    let rounded = if digits >= 0 {
        let scale = 10f64.powi(digits);
        (x * scale).round() / scale
    } else {
        let scale = 10f64.powi(-digits);
        (x / scale).round() * scale
    };
    rounded as f32
}

/// `GET /api/samples`: columns aligned with `t` (`null`: no value at that time).
#[derive(Debug, Serialize)]
pub struct SamplesView {
    pub interval_seconds: u32,
    /// Samples kept at most.
    pub window: usize,
    /// Each sample's time, seconds since the Unix epoch.
    pub t: Vec<f64>,
    pub vips: Vec<VipSeries>,
    pub drops: Vec<DropSeries>,
    /// Series without a history (over [`MAX_SERIES`]).
    pub omitted: usize,
}

#[derive(Debug, Serialize)]
pub struct SeriesView {
    pub pps: Vec<Option<f32>>,
    pub bps: Vec<Option<f32>>,
    pub fps: Vec<Option<f32>>,
}

#[derive(Debug, Serialize)]
pub struct VipSeries {
    pub name: String,
    #[serde(flatten)]
    pub rates: SeriesView,
    pub backends: Vec<BackendSeries>,
}

#[derive(Debug, Serialize)]
pub struct BackendSeries {
    pub address: String,
    #[serde(flatten)]
    pub rates: SeriesView,
}

#[derive(Debug, Serialize)]
pub struct DropSeries {
    pub reason: &'static str,
    pub pps: Vec<Option<f32>>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::agent::{BackendStats, VipStats};

    fn stats(vip: u64, backends: &[(&str, u64)], no_backend: u64) -> Stats {
        let backend = |(address, n): &(&str, u64)| BackendStats {
            address: address.to_string(),
            weight: 100,
            drained: false,
            health: "-".into(),
            packets: *n,
            bytes: 100 * n,
            new_flows: n / 10,
            connections: None,
        };
        Stats {
            counters: vec![("drop_no_backend".into(), no_backend)],
            vips: vec![VipStats {
                name: "web".into(),
                service: "198.18.100.1:80/tcp".into(),
                packets: vip,
                bytes: 100 * vip,
                new_flows: vip / 10,
                policy_drops: [0; 4],
                policy_passed: 0,
                backends: backends.iter().map(backend).collect(),
            }],
        }
    }

    #[test]
    fn rates_are_differences_over_the_time_between_readings() {
        let s = Samples::default();
        let t0 = Instant::now();
        s.record_at(&stats(1000, &[("198.18.0.11", 1000)], 5), t0, 100.0);
        assert_eq!(s.latest(&Key::Vip("web".into())), None, "one reading: no rate yet");
        // Two seconds later (a late tick): the rates are per second all the same.
        s.record_at(&stats(3000, &[("198.18.0.11", 3000)], 9), t0 + Duration::from_secs(2), 102.0);
        let web = s.latest(&Key::Vip("web".into())).expect("a rate");
        assert_eq!(web, Rates { pps: 1000.0, bps: 800_000.0, fps: 100.0 });
        assert_eq!(s.latest(&Key::Drop("no_backend")).map(|r| r.pps), Some(2.0));
        let view = s.since(0.0);
        assert_eq!(view.t, [102.0]);
        assert_eq!(view.vips[0].rates.pps, [Some(1000.0)]);
        assert_eq!(view.vips[0].backends[0].rates.bps, [Some(800_000.0)]);
        assert_eq!(view.drops.iter().find(|d| d.reason == "no_backend").unwrap().pps, [Some(2.0)]);
        assert!(s.since(102.0).t.is_empty(), "nothing after the last sample");
    }

    #[test]
    fn series_stay_aligned_as_backends_come_and_go() {
        let s = Samples::default();
        let t0 = Instant::now();
        let at = |i: u64| t0 + Duration::from_secs(i);
        s.record_at(&stats(0, &[("198.18.0.11", 0)], 0), at(0), 0.0);
        s.record_at(&stats(10, &[("198.18.0.11", 10)], 0), at(1), 1.0);
        // A second backend appears: no rate at its first reading, then one.
        s.record_at(&stats(20, &[("198.18.0.11", 20), ("198.18.0.12", 0)], 0), at(2), 2.0);
        s.record_at(&stats(40, &[("198.18.0.11", 30), ("198.18.0.12", 10)], 0), at(3), 3.0);
        // The first one's counter goes back (its id went to another backend): no rate then.
        s.record_at(&stats(50, &[("198.18.0.11", 5), ("198.18.0.12", 15)], 0), at(4), 4.0);
        let view = s.since(0.0);
        assert_eq!(view.t, [1.0, 2.0, 3.0, 4.0]);
        let web = &view.vips[0];
        assert_eq!(web.rates.pps, [Some(10.0), Some(10.0), Some(20.0), Some(10.0)]);
        let b = |a: &str| web.backends.iter().find(|b| b.address == a).unwrap_or_else(|| panic!("{a}"));
        assert_eq!(b("198.18.0.11").rates.pps, [Some(10.0), Some(10.0), Some(10.0), None]);
        assert_eq!(b("198.18.0.12").rates.pps, [None, None, Some(10.0), Some(5.0)]);
        let later = s.since(2.5);
        assert_eq!(later.t, [3.0, 4.0]);
        assert_eq!(later.vips[0].rates.pps, [Some(20.0), Some(10.0)]);
    }

    #[test]
    fn the_window_holds_fifteen_minutes_and_forgets_what_is_gone() {
        let s = Samples::default();
        let t0 = Instant::now();
        for i in 0..=(WINDOW as u64 + 10) {
            // The backend is removed after the first 5 samples.
            let backends: &[(&str, u64)] = if i <= 5 { &[("198.18.0.11", 10 * i)] } else { &[] };
            s.record_at(&stats(10 * i, backends, 0), t0 + Duration::from_secs(i), i as f64);
        }
        let view = s.since(0.0);
        assert_eq!(view.t.len(), WINDOW);
        assert_eq!(view.t.first(), Some(&11.0));
        assert!(view.vips[0].rates.pps.iter().all(|p| *p == Some(10.0)));
        assert!(view.vips[0].backends.is_empty(), "a backend without a value in the window is forgotten");
    }

    #[test]
    fn series_beyond_the_budget_keep_only_their_latest_rates() {
        let s = Samples::default();
        let t0 = Instant::now();
        let names: Vec<String> =
            (0..MAX_SERIES + 10).map(|i| format!("198.18.{}.{}", i / 250, i % 250 + 1)).collect();
        for i in 0..2u64 {
            let backends: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 5 * i)).collect();
            s.record_at(&stats(i, &backends, 0), t0 + Duration::from_secs(i), i as f64);
        }
        let view = s.since(0.0);
        let kept = view.vips.len() + view.drops.len() + view.vips[0].backends.len();
        assert_eq!(kept, MAX_SERIES);
        assert_eq!(view.omitted, names.len() + 1 + view.drops.len() - MAX_SERIES);
        let last = Key::Backend("web".into(), names.last().unwrap().clone());
        assert_eq!(s.latest(&last).map(|r| r.pps), Some(5.0), "latest rates for every series");
    }

    #[test]
    fn rounding_keeps_three_significant_digits() {
        assert_eq!(round(0.0), 0.0);
        assert_eq!(round(1234.5678), 1230.0);
        assert_eq!(round(0.012345), 0.0123);
        assert_eq!(round(98_765_432.0), 98_800_000.0);
    }
}
