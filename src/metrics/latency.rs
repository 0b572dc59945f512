//! A latency histogram for the fan-out's hot path: [`Latency`].
//!
//! prometheus-client's `Histogram` takes a lock per observation. Publication frames are
//! observed once per delivery, millions of times a second from every worker thread, so this one
//! keeps its counts in per-thread shards of plain atomics (one cache line or two each, never
//! shared by two threads that observe at the same time) and adds them up when the metrics are
//! read. An observation is two relaxed atomic adds on memory the thread owns.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bound of the first bucket.
const FIRST_NS: u64 = 10_000;
/// Finite buckets: 10 µs, 20 µs, 40 µs, ... 2^17 x 10 µs (about 1.3 s), then +Inf.
const FINITE: usize = 18;
/// Shards; threads beyond it share (a worker pool has a few threads).
const SHARDS: usize = 16;

#[repr(align(64))]
#[derive(Debug, Default)]
struct Shard {
    /// Observations per bucket, the last one +Inf (not cumulative).
    buckets: [AtomicU64; FINITE + 1],
    /// Sum of the observations, in nanoseconds.
    sum_ns: AtomicU64,
}

/// A histogram of durations with buckets 10 µs x 2^i, cheap to observe from many threads.
/// Clones share the counts.
#[derive(Clone, Debug)]
pub struct Latency {
    shards: Arc<[Shard; SHARDS]>,
}

impl Default for Latency {
    fn default() -> Self {
        Latency { shards: Arc::new(std::array::from_fn(|_| Shard::default())) }
    }
}

/// This thread's shard: threads are numbered as they first observe.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|i| *i)
}

/// The bucket of `ns`: the first whose bound is at least `ns`.
fn bucket_of(ns: u64) -> usize {
    let q = ns.div_ceil(FIRST_NS);
    if q <= 1 {
        return 0;
    }
    ((64 - (q - 1).leading_zeros()) as usize).min(FINITE)
}

/// The upper bound of finite bucket `i`, in seconds.
fn bound_s(i: usize) -> f64 {
    (FIRST_NS << i) as f64 / 1e9
}

impl Latency {
    /// Counts one observation of `took`.
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[shard_index()];
        shard.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far, in all.
    pub fn count(&self) -> u64 {
        self.buckets().iter().map(|(_, n)| n).sum()
    }

    /// `(upper bound in seconds, observations)` per bucket, not cumulative, the last +Inf.
    fn buckets(&self) -> Vec<(f64, u64)> {
        (0..=FINITE)
            .map(|i| {
                let n = self.shards.iter().map(|s| s.buckets[i].load(Ordering::Relaxed)).sum();
                (if i == FINITE { f64::INFINITY } else { bound_s(i) }, n)
            })
            .collect()
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Sum and buckets are read one after the other while others observe: the sum may lag
        // the counts by the observations in between, which Prometheus tolerates (rates of both
        // stay right).
        let buckets = self.buckets();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum_ns: u64 = self.shards.iter().map(|s| s.sum_ns.load(Ordering::Relaxed)).sum();
        encoder.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_duration_falls_in_the_first_bucket_that_holds_it() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(10_000), 0);
        assert_eq!(bucket_of(10_001), 1);
        assert_eq!(bucket_of(20_000), 1);
        assert_eq!(bucket_of(20_001), 2);
        assert_eq!(bucket_of(FIRST_NS << (FINITE - 1)), FINITE - 1);
        assert_eq!(bucket_of((FIRST_NS << (FINITE - 1)) + 1), FINITE);
        assert_eq!(bucket_of(u64::MAX), FINITE);
        for i in 0..FINITE {
            let ns = FIRST_NS << i;
            assert!(bound_s(bucket_of(ns)) * 1e9 >= ns as f64);
            assert!(i == 0 || bound_s(bucket_of(ns) - 1) * 1e9 < ns as f64);
        }
    }

    #[test]
    fn observations_from_many_threads_add_up() {
        let l = Latency::default();
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let l = l.clone();
                s.spawn(move || {
                    for _ in 0..1000 {
                        l.observe(Duration::from_micros(15 * (t + 1)));
                    }
                });
            }
        });
        assert_eq!(l.count(), 4000);
        let b = l.buckets();
        assert_eq!(
            [b[0].1, b[1].1, b[2].1, b[3].1, b[4].1],
            [0, 1000, 1000, 2000, 0],
            "15, 30, 45 and 60 µs"
        );
        assert_eq!(b.last().unwrap().0, f64::INFINITY);
    }

    #[test]
    fn renders_as_a_prometheus_histogram() {
        let l = Latency::default();
        l.observe(Duration::from_micros(15));
        l.observe(Duration::from_secs(5));
        let mut r = prometheus_client::registry::Registry::default();
        r.register_with_unit("w", "h", prometheus_client::registry::Unit::Seconds, l);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        assert!(out.contains("# TYPE w_seconds histogram"), "{out}");
        assert!(out.contains("w_seconds_count 2\n"), "{out}");
        assert!(out.contains("w_seconds_sum 5.000015\n"), "{out}");
        assert!(
            out.contains("w_seconds_bucket{le=\"1e-5\"} 0\n")
                || out.contains("w_seconds_bucket{le=\"0.00001\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("w_seconds_bucket{le=\"+Inf\"} 2\n"), "{out}");
    }
}
