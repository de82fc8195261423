//! keel's Prometheus metrics, made at scrape time: a `prometheus_client` [`Collector`] that
//! reads the counters of [`super::metrics`], the session registry and the logical units of
//! every target, and encodes them in the Prometheus text format (0.0.4) or OpenMetrics.
//!
//! Nothing here runs on the command path: the per-command counters are plain per-connection
//! blocks ([`super::metrics`]); this sums them when Prometheus asks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Error;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Service;
use super::metrics::{LATENCY_BOUNDS, LunTotals, bucket_bound_seconds};
use super::session::SessionInfo;
use crate::scsi::CommandClass;

/// The scrape-time collector of one iSCSI service.
#[derive(Debug)]
pub struct KeelCollector {
    service: Arc<Service>,
}

/// A registry holding keel's collector: encode it with [`render`] on each scrape.
pub fn registry(service: Arc<Service>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(KeelCollector { service }));
    registry
}

/// The exposition of `registry`: OpenMetrics 1.0 when `openmetrics`, else the Prometheus
/// text format 0.0.4.
pub fn render(registry: &Registry, openmetrics: bool) -> Result<String, Error> {
    let mut text = String::new();
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut text, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut text, registry)?;
    }
    Ok(text)
}

/// What is known of one LUN at scrape time.
struct LunNow {
    unit_attentions: u64,
    pr_generation: u32,
}

impl Collector for KeelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let service = &self.service;
        // Counts of targets and LUNs that are gone are dropped here too, so memory stays
        // bounded when they come and go.
        service.forget_removed_metrics();
        let targets = service.targets.list();
        let names: BTreeSet<String> = targets.iter().map(|t| t.name.clone()).collect();
        // The session registry is read before the counters: a connection folds its counts
        // into the retired totals before its session leaves the registry, so a scrape that
        // shows a session gone also shows everything it counted. Read the other way round,
        // a session could end between the two reads and its last commands appear in
        // neither (tests/metrics.rs writes_still_running_... saw 0 or 12 of 16 writes).
        let sessions = service.sessions.list();

        let mut luns: BTreeMap<(String, u64), LunNow> = BTreeMap::new();
        for target in &targets {
            for lu in target.device.luns() {
                let now = LunNow {
                    unit_attentions: lu.unit_attentions().raised(),
                    pr_generation: lu.reservations().snapshot().generation,
                };
                luns.insert((target.name.clone(), lu.lun()), now);
            }
        }
        let mut totals = service.metrics.lun_totals();
        // Every LUN that exists has its series, zero until its first command.
        for key in luns.keys() {
            totals.entry(key.clone()).or_default();
        }

        let mut info = encoder.encode_descriptor(
            "keel_build_info",
            "keel's version (the value is always 1)",
            None,
            MetricType::Gauge,
        )?;
        info.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?
            .encode_gauge(&1i64)?;

        let mut uptime = encoder.encode_descriptor(
            "keel_uptime_seconds",
            "Seconds since keel started",
            None,
            MetricType::Gauge,
        )?;
        uptime.encode_gauge(&service.started.elapsed().as_secs_f64())?;

        encode_lun_counters(&mut encoder, &totals)?;

        let mut uas = encoder.encode_descriptor(
            "keel_lun_unit_attentions",
            "Unit attention conditions established, one per I_T nexus reached",
            None,
            MetricType::Counter,
        )?;
        for ((target, lun), now) in &luns {
            uas.encode_family(&lun_labels(target, *lun))?
                .encode_counter::<NoLabelSet, _, u64>(&now.unit_attentions, None)?;
        }
        let mut generation = encoder.encode_descriptor(
            "keel_lun_pr_generation",
            "The LUN's persistent reservation generation (SPC-4 PRgeneration)",
            None,
            MetricType::Gauge,
        )?;
        for ((target, lun), now) in &luns {
            generation
                .encode_family(&lun_labels(target, *lun))?
                .encode_gauge(&i64::from(now.pr_generation))?;
        }

        encode_sessions(&mut encoder, &sessions, &names)?;

        let mut logins = encoder.encode_descriptor(
            "keel_logins",
            "Logins by outcome: the Status-Class of the final Login Response (RFC 7143 §11.13.5)",
            None,
            MetricType::Counter,
        )?;
        for ((target, result), count) in service.metrics.logins() {
            logins
                .encode_family(&[("target", target.as_str()), ("result", result.name())])?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
        let mut tmfs = encoder.encode_descriptor(
            "keel_task_management",
            "Task management functions by function and response (RFC 7143 §11.5, §11.6)",
            None,
            MetricType::Counter,
        )?;
        for ((target, function, response), count) in service.metrics.task_management() {
            let labels = [
                ("target", target.as_str()),
                ("function", function),
                ("response", response),
            ];
            tmfs.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
        }
        Ok(())
    }
}

fn lun_labels(target: &str, lun: u64) -> [(&'static str, String); 2] {
    [("target", target.to_owned()), ("lun", lun.to_string())]
}

fn class_labels(target: &str, lun: u64, class: CommandClass) -> impl EncodeLabelSet {
    [
        ("target", target.to_owned()),
        ("lun", lun.to_string()),
        ("class", class.name().to_owned()),
    ]
}

/// Commands, bytes and latency per LUN and command class.
fn encode_lun_counters(
    encoder: &mut DescriptorEncoder,
    totals: &BTreeMap<(String, u64), LunTotals>,
) -> Result<(), Error> {
    let mut commands = encoder.encode_descriptor(
        "keel_lun_commands",
        "SCSI commands completed, by class (read: READ(6-16); write: WRITE(6-16), WRITE AND VERIFY, WRITE ATOMIC; other)",
        None,
        MetricType::Counter,
    )?;
    for ((target, lun), total) in totals {
        for class in CommandClass::ALL {
            commands
                .encode_family(&class_labels(target, *lun, class))?
                .encode_counter::<NoLabelSet, _, u64>(&total.class(class).commands(), None)?;
        }
    }
    let mut bytes = encoder.encode_descriptor(
        "keel_lun_bytes",
        "Bytes read from or written to the medium by successful read and write commands",
        None,
        MetricType::Counter,
    )?;
    for ((target, lun), total) in totals {
        for class in [CommandClass::Read, CommandClass::Write] {
            bytes
                .encode_family(&class_labels(target, *lun, class))?
                .encode_counter::<NoLabelSet, _, u64>(&total.class(class).bytes, None)?;
        }
    }
    let mut latency = encoder.encode_descriptor(
        "keel_lun_command_duration_seconds",
        "Command execution time, from all its data received to its outcome",
        None,
        MetricType::Histogram,
    )?;
    for ((target, lun), total) in totals {
        for class in CommandClass::ALL {
            let class_total = total.class(class);
            let mut buckets = Vec::with_capacity(LATENCY_BOUNDS + 1);
            for (i, count) in class_total.buckets.iter().enumerate() {
                let bound = if i < LATENCY_BOUNDS {
                    bucket_bound_seconds(i)
                } else {
                    f64::INFINITY
                };
                buckets.push((bound, *count));
            }
            latency
                .encode_family(&class_labels(target, *lun, class))?
                .encode_histogram::<NoLabelSet>(
                    class_total.duration_nanos as f64 / 1e9,
                    class_total.commands(),
                    &buckets,
                    None,
                )?;
        }
    }
    Ok(())
}

/// Sessions and connections per target (every target, zero included), and discovery
/// sessions.
fn encode_sessions(
    encoder: &mut DescriptorEncoder,
    sessions: &[SessionInfo],
    targets: &BTreeSet<String>,
) -> Result<(), Error> {
    let mut per_target: BTreeMap<&str, (i64, i64)> =
        targets.iter().map(|t| (t.as_str(), (0, 0))).collect();
    let mut discovery = 0i64;
    for session in sessions {
        if session.target.is_empty() {
            discovery += 1;
        } else if let Some(count) = per_target.get_mut(session.target.as_str()) {
            count.0 += 1;
            count.1 += session.connections.len() as i64;
        }
    }
    let mut gauge = encoder.encode_descriptor(
        "keel_target_sessions",
        "Sessions logged in to the target",
        None,
        MetricType::Gauge,
    )?;
    for (target, (sessions, _)) in &per_target {
        gauge
            .encode_family(&[("target", *target)])?
            .encode_gauge(sessions)?;
    }
    let mut gauge = encoder.encode_descriptor(
        "keel_target_connections",
        "Connections in the full feature phase to the target",
        None,
        MetricType::Gauge,
    )?;
    for (target, (_, connections)) in &per_target {
        gauge
            .encode_family(&[("target", *target)])?
            .encode_gauge(connections)?;
    }
    let mut gauge = encoder.encode_descriptor(
        "keel_discovery_sessions",
        "Discovery sessions logged in",
        None,
        MetricType::Gauge,
    )?;
    gauge.encode_gauge(&discovery)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::iscsi::{Settings, Target};

    const TARGET: &str = "iqn.2026-01.test:metrics";

    fn service() -> Arc<Service> {
        let service = Arc::new(Service::new(Settings::default()));
        service
            .targets
            .insert(Arc::new(Target::for_test(TARGET, 512, false)));
        service
    }

    /// Samples by `name{labels}` (labels as written), from the text format 0.0.4.
    fn parse(text: &str) -> HashMap<String, f64> {
        let mut samples = HashMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().expect("a number"),
            };
            assert!(
                samples.insert(series.to_owned(), value).is_none(),
                "{series} twice"
            );
        }
        samples
    }

    #[test]
    fn the_exposition_carries_every_family_and_the_counts() {
        let service = service();
        let registry = registry(service.clone());
        // Before any command, the LUN's series exist at zero.
        let before = parse(&render(&registry, false).unwrap());
        let written =
            format!("keel_lun_bytes_total{{target=\"{TARGET}\",lun=\"0\",class=\"write\"}}");
        assert_eq!(before[&written], 0.0);

        let mut connection = service.metrics.connection(TARGET);
        connection.record(0, CommandClass::Write, 4096, 20_000);
        connection.record(0, CommandClass::Write, 8192, 3_000_000);
        connection.record(0, CommandClass::Read, 512, 10_000);
        service.metrics.count_login(TARGET, 0);
        service.metrics.count_task_management(TARGET, 1, 0);
        let text = render(&registry, false).unwrap();
        let samples = parse(&text);
        assert_eq!(samples[&written], 12_288.0);
        let lun = format!("target=\"{TARGET}\",lun=\"0\"");
        assert_eq!(
            samples[&format!("keel_lun_commands_total{{{lun},class=\"write\"}}")],
            2.0
        );
        assert_eq!(
            samples[&format!("keel_lun_commands_total{{{lun},class=\"read\"}}")],
            1.0
        );
        let hist = "keel_lun_command_duration_seconds";
        assert_eq!(
            samples[&format!("{hist}_count{{{lun},class=\"write\"}}")],
            2.0
        );
        let sum = samples[&format!("{hist}_sum{{{lun},class=\"write\"}}")];
        assert!((sum - 0.00302).abs() < 1e-9, "{sum}");
        // 20 µs is in the 32 µs bucket, 3 ms in the 4.096 ms one; buckets are cumulative.
        let bucket =
            |le: &str| samples[&format!("{hist}_bucket{{{lun},class=\"write\",le=\"{le}\"}}")];
        assert_eq!(bucket("1.6e-05"), 0.0);
        assert_eq!(bucket("3.2e-05"), 1.0);
        assert_eq!(bucket("0.004096"), 2.0);
        assert_eq!(bucket("+Inf"), 2.0);
        assert_eq!(
            samples[&format!("keel_lun_unit_attentions_total{{{lun}}}")],
            0.0
        );
        assert_eq!(samples[&format!("keel_lun_pr_generation{{{lun}}}")], 0.0);
        assert_eq!(
            samples[&format!("keel_target_sessions{{target=\"{TARGET}\"}}")],
            0.0
        );
        assert_eq!(
            samples[&format!("keel_logins_total{{target=\"{TARGET}\",result=\"success\"}}")],
            1.0
        );
        let tmf = format!(
            "keel_task_management_total{{target=\"{TARGET}\",function=\"abort_task\",response=\"complete\"}}"
        );
        assert_eq!(samples[&tmf], 1.0);
        let version = format!(
            "keel_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(samples[&version], 1.0);
        for family in ["keel_lun_bytes_total", "keel_lun_command_duration_seconds"] {
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }

        // The connection ends: its counts stay. Its target goes: they are dropped.
        drop(connection);
        assert_eq!(
            parse(&render(&registry, false).unwrap())[&written],
            12_288.0
        );
        service.targets.remove(TARGET);
        let after = parse(&render(&registry, false).unwrap());
        assert!(!after.contains_key(&written));
        assert!(after.keys().all(|k| !k.starts_with("keel_logins_total")));
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let text = render(&registry(service()), true).unwrap();
        assert!(text.ends_with("# EOF\n"));
        assert!(text.contains("# TYPE keel_lun_bytes counter"));
    }
}
