//! The judge: gray against base over the same window. Pure statistics, no I/O, no clock.
//!
//! A window is judged only when *both* sides have at least `min_requests` requests; otherwise it
//! is **no data** and the step holds (neither a pass nor a failure). That rules out the two
//! classic mistakes: failing a quiet canary because a query found no values (Flagger) and
//! passing a canary because the baseline had nothing to compare with (Kayenta).
//!
//! Then two checks, both must pass:
//!
//! - **Errors** — a request failed when it got a 5xx or graysplit could not get an answer from
//!   the upstream. Gray fails when its error rate exceeds base's by more than
//!   `max_error_increase` **and** the difference is significant in a one-sided pooled
//!   two-proportion z-test at `confidence` (z > z₁₋α). The margin keeps a large window from
//!   failing on a negligible difference; the test keeps a small one from failing on one unlucky
//!   request.
//! - **Latency** — gray's p99 (from histogram buckets, interpolated as Prometheus'
//!   `histogram_quantile` does) must not exceed `max(base p99 × p99_ratio, p99_floor)`.

use super::plan::Analysis;

/// Upper bounds (inclusive) of the latency buckets, in milliseconds; one more bucket holds
/// everything slower. Fine at the low end, where frontend files live.
pub const BOUNDS_MS: [u32; 24] = [
    1, 2, 3, 5, 8, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 1500, 2000, 3000,
    5000, 10_000, 30_000,
];
/// Buckets per histogram: one per bound plus the overflow bucket.
pub const BUCKETS: usize = BOUNDS_MS.len() + 1;

/// The bucket an observation of `ms` milliseconds falls into.
pub fn bucket_of(ms: u64) -> usize {
    BOUNDS_MS
        .iter()
        .position(|b| ms <= u64::from(*b))
        .unwrap_or(BOUNDS_MS.len())
}

/// The `q` quantile (0..1) of a histogram of per-bucket counts, linearly interpolated inside its
/// bucket; in the overflow bucket, the highest bound (as `histogram_quantile` returns for +Inf).
/// `None` without observations.
pub fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total = counts.iter().fold(0u64, |t, n| t.saturating_add(*n));
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if below.saturating_add(n) as f64 >= rank {
            let Some(&upper) = BOUNDS_MS.get(i) else {
                return Some(f64::from(BOUNDS_MS[BOUNDS_MS.len() - 1]));
            };
            let lower = if i == 0 { 0 } else { BOUNDS_MS[i - 1] };
            let into = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(f64::from(lower) + f64::from(upper - lower) * into);
        }
        below = below.saturating_add(n);
    }
    Some(f64::from(BOUNDS_MS[BOUNDS_MS.len() - 1]))
}

/// One side of a window: requests, failed requests, latency histogram.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Side {
    pub requests: u64,
    pub failed: u64,
    /// Per-bucket counts ([`BUCKETS`] long, or empty for none).
    pub latency: Vec<u64>,
}

impl Side {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            (self.failed as f64 / self.requests as f64).min(1.0)
        }
    }

    pub fn p99_ms(&self) -> Option<f64> {
        quantile(&self.latency, 0.99)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// Too few requests on a side: the step holds.
    NoData,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::NoData => "no_data",
        }
    }
}

/// Which check failed (also the rollback's metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Errors,
    Latency,
}

impl Check {
    pub fn label(self) -> &'static str {
        match self {
            Check::Errors => "errors",
            Check::Latency => "latency",
        }
    }
}

/// A verdict and every number behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    pub failed: Vec<Check>,
    /// One sentence an operator can read in the log.
    pub reason: String,
    /// z statistic of gray's error rate above base's (`None` when not judged).
    pub z: Option<f64>,
    pub z_critical: f64,
    pub base_p99_ms: Option<f64>,
    pub gray_p99_ms: Option<f64>,
    pub allowed_p99_ms: Option<f64>,
}

/// Judges one window.
pub fn judge(base: &Side, gray: &Side, a: &Analysis) -> Judgement {
    let z_critical = z_for_confidence(a.confidence);
    let mut j = Judgement {
        verdict: Verdict::NoData,
        failed: Vec::new(),
        reason: String::new(),
        z: None,
        z_critical,
        base_p99_ms: base.p99_ms(),
        gray_p99_ms: gray.p99_ms(),
        allowed_p99_ms: None,
    };
    if gray.requests < a.min_requests || base.requests < a.min_requests {
        j.reason = format!(
            "gray had {} request(s), base {}; a window needs {} on each side",
            gray.requests, base.requests, a.min_requests
        );
        return j;
    }
    let (pg, pb) = (gray.error_rate(), base.error_rate());
    let z = two_proportion_z(gray.failed, gray.requests, base.failed, base.requests);
    j.z = Some(z);
    let errors_bad = pg - pb > a.max_error_increase && z > z_critical;
    let errors = format!(
        "errors gray {:.2} % vs base {:.2} % ({:+.2} pp, allowed +{:.2} pp; z {} vs {:.2})",
        pg * 100.0,
        pb * 100.0,
        (pg - pb) * 100.0,
        a.max_error_increase * 100.0,
        fmt_z(z),
        z_critical
    );
    let floor = a.p99_floor.as_secs_f64() * 1000.0;
    let allowed = j
        .base_p99_ms
        .map_or(floor, |b| (b * a.p99_ratio).max(floor));
    let latency_bad = j.gray_p99_ms.is_some_and(|g| g > allowed);
    j.allowed_p99_ms = j.gray_p99_ms.map(|_| allowed);
    let latency = match (j.gray_p99_ms, j.base_p99_ms) {
        (Some(g), Some(b)) => {
            format!("p99 gray {g:.1} ms vs base {b:.1} ms (allowed {allowed:.1} ms)")
        }
        (Some(g), None) => format!("p99 gray {g:.1} ms, base none (allowed {allowed:.1} ms)"),
        (None, _) => "p99 gray none".to_string(),
    };
    if errors_bad {
        j.failed.push(Check::Errors);
    }
    if latency_bad {
        j.failed.push(Check::Latency);
    }
    j.verdict = if j.failed.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    j.reason = format!("{errors}; {latency}");
    j
}

fn fmt_z(z: f64) -> String {
    if z.is_infinite() {
        "inf".into()
    } else {
        format!("{z:.2}")
    }
}

/// The pooled two-proportion z statistic of `x1/n1` above `x2/n2` (positive when the first rate
/// is higher). With no variance at all (both rates 0 or both 1) the rates are equal: 0.
pub fn two_proportion_z(x1: u64, n1: u64, x2: u64, n2: u64) -> f64 {
    if n1 == 0 || n2 == 0 {
        return 0.0;
    }
    // Counts come from other instances' records: never more failures than requests.
    let (x1, x2) = (x1.min(n1), x2.min(n2));
    let (n1f, n2f) = (n1 as f64, n2 as f64);
    let (p1, p2) = (x1 as f64 / n1f, x2 as f64 / n2f);
    let pooled = (x1 as f64 + x2 as f64) / (n1f + n2f);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1f + 1.0 / n2f)).sqrt();
    if se == 0.0 {
        return 0.0;
    }
    (p1 - p2) / se
}

/// The one-sided critical value z₁₋α for a confidence `c` (0.99 → 2.326).
pub fn z_for_confidence(c: f64) -> f64 {
    inverse_normal_cdf(c.clamp(0.5, 0.999_999))
}

/// The standard normal quantile (Acklam's rational approximation, relative error below 1.2e-9).
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn side(requests: u64, failed: u64, latency_ms: &[(u64, u64)]) -> Side {
        let mut latency = vec![0; BUCKETS];
        for &(ms, n) in latency_ms {
            latency[bucket_of(ms)] += n;
        }
        Side {
            requests,
            failed,
            latency,
        }
    }

    fn close(a: f64, b: f64, eps: f64) -> bool {
        (a - b).abs() < eps
    }

    #[test]
    fn normal_quantiles_match_the_tables() {
        assert!(close(z_for_confidence(0.95), 1.644_854, 1e-5));
        assert!(close(z_for_confidence(0.975), 1.959_964, 1e-5));
        assert!(close(z_for_confidence(0.99), 2.326_348, 1e-5));
        assert!(close(z_for_confidence(0.999), 3.090_232, 1e-5));
        assert!(close(inverse_normal_cdf(0.5), 0.0, 1e-9));
        assert!(close(inverse_normal_cdf(0.01), -2.326_348, 1e-5));
    }

    #[test]
    fn two_proportion_z_known_values() {
        // 5/100 against 0/400: pooled 0.01, SE = sqrt(0.0099 * 0.0125) = 0.011124.
        assert!(close(two_proportion_z(5, 100, 0, 400), 4.494_666, 1e-4));
        // The textbook example: 140/200 vs 255/340 → -1.266.
        assert!(close(
            two_proportion_z(140, 200, 255, 340),
            -1.266_015,
            1e-4
        ));
        assert_eq!(two_proportion_z(0, 100, 0, 100), 0.0);
        assert_eq!(two_proportion_z(100, 100, 50, 50), 0.0);
        assert_eq!(two_proportion_z(1, 0, 1, 10), 0.0);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        // 100 observations in (10, 15] ms: p99 at 99 % of the way from 10 to 15.
        let s = side(100, 0, &[(12, 100)]);
        assert!(close(s.p99_ms().unwrap(), 14.95, 1e-9));
        // 98 fast and 2 slow ones: the 99th is the first slow one, in (200, 300].
        let s = side(100, 0, &[(1, 98), (250, 2)]);
        assert!(close(s.p99_ms().unwrap(), 250.0, 1e-9));
        // Everything beyond the last bound: that bound.
        let s = side(10, 0, &[(60_000, 10)]);
        assert_eq!(s.p99_ms(), Some(30_000.0));
        assert_eq!(side(0, 0, &[]).p99_ms(), None);
        assert_eq!(quantile(&[], 0.99), None);
    }

    #[test]
    fn too_few_requests_on_either_side_is_no_data() {
        let a = Analysis::default();
        let j = judge(&side(5_000, 0, &[]), &side(99, 50, &[]), &a);
        assert_eq!(j.verdict, Verdict::NoData);
        assert!(
            j.reason.contains("gray had 99 request(s), base 5000"),
            "{}",
            j.reason
        );
        // An empty baseline never passes a gray that has traffic (Kayenta's bug).
        let j = judge(&side(0, 0, &[]), &side(1_000, 0, &[]), &a);
        assert_eq!(j.verdict, Verdict::NoData);
        assert_eq!(j.z, None);
    }

    #[test]
    fn five_percent_errors_against_none_fails_on_errors() {
        let a = Analysis::default();
        let j = judge(&side(400, 0, &[(5, 400)]), &side(100, 5, &[(5, 100)]), &a);
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.failed, vec![Check::Errors]);
        assert!(close(j.z.unwrap(), 4.494_666, 1e-4));
        assert!(
            j.reason.contains("errors gray 5.00 % vs base 0.00 %"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn one_unlucky_request_in_a_small_window_is_not_significant() {
        // 1 of 100 against 0 of 100: +1 pp is beyond a 0.5 pp margin, but z = 1.0 < 2.33.
        let a = Analysis {
            max_error_increase: 0.005,
            ..Analysis::default()
        };
        let j = judge(&side(100, 0, &[]), &side(100, 1, &[]), &a);
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        assert!(close(j.z.unwrap(), 1.002_509, 1e-4));
    }

    #[test]
    fn a_significant_but_negligible_difference_passes_within_the_margin() {
        // 0.6 % against 0.1 % over a million requests each: z is huge, +0.5 pp < 1 pp.
        let a = Analysis::default();
        let j = judge(
            &side(1_000_000, 1_000, &[]),
            &side(1_000_000, 6_000, &[]),
            &a,
        );
        assert!(j.z.unwrap() > 50.0);
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
    }

    #[test]
    fn latency_is_judged_against_a_ratio_of_base_with_a_floor() {
        let a = Analysis {
            p99_ratio: 1.5,
            p99_floor: Duration::from_millis(100),
            ..Analysis::default()
        };
        // 2 ms against 40 ms: 20x, but under the 100 ms floor.
        let j = judge(&side(200, 0, &[(2, 200)]), &side(200, 0, &[(40, 200)]), &a);
        assert_eq!(j.verdict, Verdict::Pass, "{}", j.reason);
        assert_eq!(j.allowed_p99_ms, Some(100.0));
        // 200 ms against 400 ms: above 1.5 x 200 = 300.
        let j = judge(
            &side(200, 0, &[(200, 200)]),
            &side(200, 0, &[(400, 200)]),
            &a,
        );
        assert_eq!(j.verdict, Verdict::Fail);
        assert_eq!(j.failed, vec![Check::Latency]);
        assert!(close(j.allowed_p99_ms.unwrap(), 199.5 * 1.5, 1e-9));
        assert!(close(j.gray_p99_ms.unwrap(), 498.0, 1e-9));
        // Both checks failing are both named.
        let j = judge(
            &side(200, 0, &[(200, 200)]),
            &side(200, 40, &[(400, 200)]),
            &a,
        );
        assert_eq!(j.failed, vec![Check::Errors, Check::Latency]);
    }
}
