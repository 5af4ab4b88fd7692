//! The gateway's counters and gauges, and their Prometheus text exposition (version 0.0.4,
//! through the `prometheus-client` crate).
//!
//! Counting costs an atomic add: every series of every counter exists from the start (its
//! labels come from closed sets: the record model's words, the classifier's kinds), and the
//! data path increments a handle it finds in a map that never changes after start, never a
//! lock. What is already kept elsewhere (masking counts, approvals, the recorder's queue, the
//! intercept set's ages) is read when scraped.
//!
//! Must never carry a secret or anything a client chose as a label: rule names come from the
//! config, every other label from a fixed list.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
};

use ghgate_policy::classify::Kind;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
    },
    registry::Registry,
};

use crate::{
    approval::Approvals,
    record::{
        Recorder,
        model::{self, AnsweredBy, DecisionAction, DecisionOutcome, RefusalLayer, RefusalReason},
    },
};

/// The `Content-Type` of what [`encode`] writes.
pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A counter whose every series exists from the start: `inc` finds its handle without a lock.
#[derive(Debug)]
struct Labeled<const N: usize> {
    family: Family<[(&'static str, &'static str); N], Counter>,
    series: HashMap<[&'static str; N], Counter>,
}

impl<const N: usize> Labeled<N> {
    fn new(keys: [&'static str; N], combinations: impl IntoIterator<Item = [&'static str; N]>) -> Self {
        let family = Family::default();
        let series = combinations
            .into_iter()
            .map(|values| {
                let labels = std::array::from_fn(|i| (keys[i], values[i]));
                (values, family.get_or_create_owned(&labels))
            })
            .collect();
        Self { family, series }
    }

    fn inc_by(&self, values: [&'static str; N], by: u64) {
        if let Some(c) = self.series.get(&values) {
            c.inc_by(by);
        }
    }

    #[cfg(test)]
    fn get(&self, values: [&'static str; N]) -> u64 {
        self.series.get(&values).map_or(0, Counter::get)
    }
}

/// Every product of the given label values.
fn product2(a: &[&'static str], b: &[&'static str]) -> Vec<[&'static str; 2]> {
    a.iter().flat_map(|x| b.iter().map(move |y| [*x, *y])).collect()
}

const KINDS: [Kind; 6] = [
    Kind::RestApi,
    Kind::GraphQl,
    Kind::Git,
    Kind::UserContent,
    Kind::Copilot,
    Kind::Other,
];

/// An exchange's status as a label: its class, or "error" when it ended without an answer.
const STATUSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// The connection caps, as the `cap` label names them (`[http] max_connections_per_process`,
/// `_per_cgroup`, `max_connections`).
pub const CAPS: [&str; 3] = ["process", "cgroup", "total"];

/// What asking a passthrough destination found (`tls::fronting`), as the `verdict` label names
/// it; `unasked`: not asked, over the budget of new addresses.
pub const PROBE_VERDICTS: [&str; 4] = ["clean", "serves", "unreachable", "unasked"];

/// The event sinks, as the `sink` label names them.
pub const SINKS: [&str; 2] = ["syslog", "webhook"];

/// The process's counters. One instance serves the daemon ([`metrics`]); tests make their own.
#[derive(Debug)]
pub struct Metrics {
    redirected: Counter,
    capped: Labeled<1>,
    passthrough_probes: Labeled<1>,
    /// Connections held through the gateway now (under the caps).
    held: AtomicU64,
    refused: Labeled<2>,
    exchanges: Labeled<3>,
    decisions: Labeled<2>,
    sink_events: Labeled<2>,
    sink_failures: Labeled<1>,
    /// Events waiting in each sink's buffer (index as in [`SINKS`]).
    sink_buffered: [AtomicU64; 2],
    /// When the GitHub ranges in force were fetched (µs since the epoch; 0: never, shipped).
    ranges_fetched_at: AtomicU64,
    /// When the oldest good answer among the intercept set's names was had (µs; 0: none yet).
    names_oldest_answer_at: AtomicU64,
    names_failing: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let layers = RefusalLayer::WORDS;
        let reasons = RefusalReason::WORDS;
        let kinds: Vec<&'static str> = KINDS.iter().map(|k| k.as_str()).collect();
        let answered = AnsweredBy::WORDS;
        let exchanges = kinds
            .iter()
            .flat_map(|k| {
                answered
                    .iter()
                    .flat_map(move |a| STATUSES.iter().map(move |s| [*k, *a, *s]))
            })
            .collect::<Vec<_>>();
        Self {
            redirected: Counter::default(),
            capped: Labeled::new(["cap"], CAPS.map(|c| [c])),
            passthrough_probes: Labeled::new(["verdict"], PROBE_VERDICTS.map(|v| [v])),
            held: AtomicU64::new(0),
            refused: Labeled::new(["layer", "reason"], product2(layers, reasons)),
            exchanges: Labeled::new(["kind", "answered_by", "status"], exchanges),
            decisions: Labeled::new(
                ["action", "outcome"],
                product2(DecisionAction::WORDS, DecisionOutcome::WORDS),
            ),
            sink_events: Labeled::new(["sink", "result"], product2(&SINKS, &["sent", "dropped"])),
            sink_failures: Labeled::new(["sink"], SINKS.map(|s| [s])),
            sink_buffered: Default::default(),
            ranges_fetched_at: AtomicU64::new(0),
            names_oldest_answer_at: AtomicU64::new(0),
            names_failing: AtomicU64::new(0),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The daemon's counters.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn sink_index(sink: &str) -> usize {
    SINKS.iter().position(|s| *s == sink).unwrap_or(0)
}

impl Metrics {
    /// A connection the kernel redirected was accepted.
    pub fn redirected(&self) {
        self.redirected.inc();
    }

    /// `count` connections (or datagrams) refused.
    /// A connection closed at once because it would have passed `cap` (one of [`CAPS`]).
    pub fn capped(&self, cap: &'static str) {
        self.capped.inc_by([cap], 1);
    }

    /// A passthrough destination was asked (or not, over the budget): `verdict` is one of
    /// [`PROBE_VERDICTS`].
    pub fn passthrough_probe(&self, verdict: &'static str) {
        self.passthrough_probes.inc_by([verdict], 1);
    }

    /// Connections held through the gateway now.
    pub fn held(&self, connections: u32) {
        self.held.store(connections.into(), Ordering::Relaxed);
    }

    pub fn refused(&self, layer: RefusalLayer, reason: RefusalReason, count: u64) {
        self.refused.inc_by([layer.as_str(), reason.as_str()], count);
    }

    /// An exchange ended.
    pub fn exchange(&self, kind: Kind, answered_by: AnsweredBy, status: u16, failed: bool) {
        let status = match status {
            _ if failed && status == 0 => "error",
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            500..=599 => "5xx",
            _ => "error",
        };
        self.exchanges
            .inc_by([kind.as_str(), answered_by.as_str(), status], 1);
    }

    /// A policy decision.
    pub fn decision(&self, d: &model::Decision) {
        self.decisions.inc_by([d.action.as_str(), d.outcome.as_str()], 1);
    }

    /// An event reached its sink (`sent`) or was dropped from its full buffer.
    pub fn sink_event(&self, sink: &'static str, sent: bool, count: u64) {
        self.sink_events
            .inc_by([sink, if sent { "sent" } else { "dropped" }], count);
    }

    /// A send (a datagram, a POST) failed; its events wait for the next try (the webhook) or are
    /// counted dropped (syslog).
    pub fn sink_failure(&self, sink: &'static str) {
        self.sink_failures.inc_by([sink], 1);
    }

    pub fn sink_buffered(&self, sink: &'static str, len: usize) {
        self.sink_buffered[sink_index(sink)].store(len as u64, Ordering::Relaxed);
    }

    /// The GitHub ranges in force were fetched at `micros` (0: a shipped snapshot).
    pub fn ranges_fetched(&self, micros: u64) {
        self.ranges_fetched_at.store(micros, Ordering::Relaxed);
    }

    /// The intercept set's names: when the oldest good answer in force was had, and how many
    /// names fail to resolve now.
    pub fn names(&self, oldest_answer_micros: Option<u64>, failing: usize) {
        self.names_oldest_answer_at
            .store(oldest_answer_micros.unwrap_or(0), Ordering::Relaxed);
        self.names_failing.store(failing as u64, Ordering::Relaxed);
    }

    /// A registry over these counters and what `sources` keeps, for [`encode`].
    pub fn registry(&'static self, sources: Sources) -> Registry {
        self.registry_with(sources, self)
    }

    /// The counters alone, as a test reads them.
    #[cfg(test)]
    pub fn registry_for_tests(&'static self) -> Registry {
        self.registry_with(Sources::default(), self)
    }

    fn registry_with(&self, sources: Sources, me: &'static Metrics) -> Registry {
        let mut r = Registry::default();
        r.register(
            "ghgate_connections_redirected",
            "Connections the kernel redirected to the gateway and the gateway accepted",
            self.redirected.clone(),
        );
        r.register(
            "ghgate_connections_capped",
            "Connections closed at once over a connection cap, by cap (process, cgroup, total)",
            self.capped.family.clone(),
        );
        r.register(
            "ghgate_passthrough_probes",
            "Passthrough destinations asked whether they serve an intercepted name, by verdict \
             (clean, serves, unreachable), and those not asked over the budget (unasked)",
            self.passthrough_probes.family.clone(),
        );
        r.register(
            "ghgate_connections_refused",
            "Connections or datagrams refused, by layer (kernel, gateway) and reason",
            self.refused.family.clone(),
        );
        r.register(
            "ghgate_exchanges",
            "HTTP exchanges ended, by request kind, who answered and status class",
            self.exchanges.family.clone(),
        );
        r.register(
            "ghgate_decisions",
            "Policy decisions, by the deciding rule's action and their outcome",
            self.decisions.family.clone(),
        );
        r.register(
            "ghgate_telemetry_events",
            "Events the sinks sent, or dropped from a full buffer",
            self.sink_events.family.clone(),
        );
        r.register(
            "ghgate_telemetry_send_failures",
            "Failed sends (datagrams, POSTs) of the event sinks",
            self.sink_failures.family.clone(),
        );
        r.register_collector(Box::new(Scraped { metrics: me, sources }));
        r
    }
}

/// What the scrape reads from the running gateway besides the counters.
#[derive(Default)]
pub struct Sources {
    pub approvals: Option<Arc<Approvals>>,
    pub recorder: Option<Arc<Recorder>>,
    pub record_dir: Option<PathBuf>,
    /// The sinks configured (their `sink` label values).
    pub sinks: Vec<&'static str>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Scraped {
    metrics: &'static Metrics,
    sources: Sources,
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: impl Into<f64>,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v.into());
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// Bytes of the regular files under `dir` (the record store's segments and index).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some(if m.is_dir() { dir_bytes(&e.path()) } else { m.len() })
        })
        .sum()
}

fn age_secs(micros: u64, now: u64) -> Option<f64> {
    (micros != 0).then(|| now.saturating_sub(micros) as f64 / 1e6)
}

impl Collector for Scraped {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.metrics;
        let s = &self.sources;
        let masked = crate::mask::metrics::counts();
        let mut enc = e.encode_descriptor(
            "ghgate_masked",
            "Secrets masked, by rule and place",
            None,
            MetricType::Counter,
        )?;
        for (rule, place, count) in masked {
            let labels = [("rule", rule), ("place", place.to_owned())];
            ConstCounter::new(count).encode(enc.encode_family(&labels)?)?;
        }
        if let Some(a) = &s.approvals {
            let pending = a
                .list(false)
                .iter()
                .filter(|a| matches!(a.state, crate::approval::State::Pending))
                .count();
            gauge(
                &mut e,
                "ghgate_approvals_pending",
                "Approvals waiting for approvers",
                pending as f64,
            )?;
        }
        if let Some(r) = &s.recorder {
            gauge(
                &mut e,
                "ghgate_record_pending_bytes",
                "Bytes of records queued for the store and not yet written (the recorder's lag)",
                r.pending_bytes() as f64,
            )?;
            gauge(
                &mut e,
                "ghgate_record_failing",
                "1 while the record store cannot write (new requests are refused)",
                if r.failure().is_some() { 1.0 } else { 0.0 },
            )?;
        }
        if let Some(dir) = &s.record_dir {
            gauge(
                &mut e,
                "ghgate_record_store_bytes",
                "Bytes on disk of the record store (segments and index)",
                dir_bytes(dir) as f64,
            )?;
        }
        let now = model::now_micros();
        if let Some(age) = age_secs(m.ranges_fetched_at.load(Ordering::Relaxed), now) {
            gauge(
                &mut e,
                "ghgate_github_ranges_age_seconds",
                "Seconds since GitHub's address ranges in force were fetched from the meta API",
                age,
            )?;
        }
        if let Some(age) = age_secs(m.names_oldest_answer_at.load(Ordering::Relaxed), now) {
            gauge(
                &mut e,
                "ghgate_intercept_names_age_seconds",
                "Seconds since the oldest DNS answer in force for the intercept set's names",
                age,
            )?;
        }
        gauge(
            &mut e,
            "ghgate_connections_held",
            "Connections held through the gateway now (under the connection caps)",
            m.held.load(Ordering::Relaxed) as f64,
        )?;
        gauge(
            &mut e,
            "ghgate_intercept_names_failing",
            "Names of the intercept set whose last lookup failed (their last good answer stays)",
            m.names_failing.load(Ordering::Relaxed) as f64,
        )?;
        let mut enc = e.encode_descriptor(
            "ghgate_telemetry_buffered",
            "Events waiting in a sink's buffer",
            None,
            MetricType::Gauge,
        )?;
        for sink in &s.sinks {
            let v = m.sink_buffered[sink_index(sink)].load(Ordering::Relaxed);
            ConstGauge::new(v as f64).encode(enc.encode_family(&[("sink", *sink)])?)?;
        }
        Ok(())
    }
}

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaked() -> &'static Metrics {
        Box::leak(Box::default())
    }

    fn exposition(m: &'static Metrics) -> String {
        encode(&m.registry_with(
            Sources {
                sinks: vec!["webhook"],
                ..Sources::default()
            },
            m,
        ))
    }

    #[test]
    fn every_series_exists_from_the_start_with_its_type() {
        let text = exposition(leaked());
        for line in [
            "# TYPE ghgate_connections_redirected_total counter",
            "ghgate_connections_redirected_total 0",
            "# TYPE ghgate_connections_capped_total counter",
            "ghgate_connections_capped_total{cap=\"cgroup\"} 0",
            "ghgate_connections_held 0.0",
            "# TYPE ghgate_connections_refused_total counter",
            "ghgate_connections_refused_total{layer=\"kernel\",reason=\"port_not_allowed\"} 0",
            "ghgate_connections_refused_total{layer=\"gateway\",reason=\"foreign_sni\"} 0",
            "# TYPE ghgate_exchanges_total counter",
            "ghgate_exchanges_total{kind=\"rest-api\",answered_by=\"upstream\",status=\"2xx\"} 0",
            "# TYPE ghgate_decisions_total counter",
            "ghgate_decisions_total{action=\"deny\",outcome=\"refused\"} 0",
            "# TYPE ghgate_masked_total counter",
            "# TYPE ghgate_intercept_names_failing gauge",
            "ghgate_telemetry_events_total{sink=\"webhook\",result=\"dropped\"} 0",
            "ghgate_telemetry_buffered{sink=\"webhook\"} 0.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
        // No age before anything was fetched or resolved.
        assert!(!text.contains("ghgate_github_ranges_age_seconds"), "{text}");
    }

    #[test]
    fn counting_moves_exactly_its_series() {
        let m = leaked();
        m.redirected();
        m.redirected();
        m.refused(RefusalLayer::Kernel, RefusalReason::NotTcp, 3);
        m.exchange(Kind::Git, AnsweredBy::Upstream, 200, false);
        m.exchange(Kind::RestApi, AnsweredBy::Gateway, 403, false);
        m.exchange(Kind::RestApi, AnsweredBy::Upstream, 0, true);
        m.sink_event("webhook", false, 2);
        m.capped("process");
        m.passthrough_probe("serves");
        m.held(3);
        assert_eq!(m.refused.get(["kernel", "not_tcp"]), 3);
        assert_eq!(m.exchanges.get(["rest-api", "upstream", "error"]), 1);
        let text = exposition(m);
        for line in [
            "ghgate_connections_redirected_total 2",
            "ghgate_connections_refused_total{layer=\"kernel\",reason=\"not_tcp\"} 3",
            "ghgate_connections_refused_total{layer=\"gateway\",reason=\"not_tcp\"} 0",
            "ghgate_exchanges_total{kind=\"git\",answered_by=\"upstream\",status=\"2xx\"} 1",
            "ghgate_exchanges_total{kind=\"rest-api\",answered_by=\"gateway\",status=\"4xx\"} 1",
            "ghgate_telemetry_events_total{sink=\"webhook\",result=\"dropped\"} 2",
            "ghgate_connections_capped_total{cap=\"process\"} 1",
            "ghgate_connections_capped_total{cap=\"total\"} 0",
            "ghgate_passthrough_probes_total{verdict=\"serves\"} 1",
            "ghgate_passthrough_probes_total{verdict=\"clean\"} 0",
            "ghgate_connections_held 3.0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from:\n{text}");
        }
    }

    #[test]
    fn ages_are_seconds_since_the_fact() {
        let m = leaked();
        let now = model::now_micros();
        m.ranges_fetched(now - 90_000_000);
        m.names(Some(now - 5_000_000), 1);
        let text = exposition(m);
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing from:\n{text}"))
        };
        assert!((90.0..100.0).contains(&value("ghgate_github_ranges_age_seconds")));
        assert!((5.0..15.0).contains(&value("ghgate_intercept_names_age_seconds")));
        assert_eq!(value("ghgate_intercept_names_failing"), 1.0);
    }
}
