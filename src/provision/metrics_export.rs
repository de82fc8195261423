//! The provisioner's metrics, read at scrape time from [`Provisioner::stats`] and
//! [`Provisioner::status`] (a `prometheus_client` collector registered beside the iSCSI
//! service's): queue length, backend calls by kind and result, time spent in calls (the
//! pool's serialization as keel sees it), retries, volumes by state, and the time from a
//! volume's declaration to ready.

use std::collections::BTreeMap;
use std::fmt::Error;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use super::provisioner::{CallKind, CallResult, Provisioner, READY_BUCKETS, VolumeState};

/// The scrape-time collector of a provisioner.
pub struct ProvisionCollector {
    provisioner: Provisioner,
}

impl std::fmt::Debug for ProvisionCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProvisionCollector")
    }
}

impl ProvisionCollector {
    pub fn new(provisioner: Provisioner) -> ProvisionCollector {
        ProvisionCollector { provisioner }
    }
}

impl Collector for ProvisionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let stats = self.provisioner.stats();
        let mut by_state: BTreeMap<(String, &'static str), i64> = BTreeMap::new();
        for pool in &stats {
            for state in VolumeState::NAMES {
                by_state.insert((pool.pool.clone(), state), 0);
            }
        }
        for volume in self.provisioner.status() {
            *by_state
                .entry((volume.pool.clone(), volume.state.name()))
                .or_default() += 1;
        }

        let mut queue = encoder.encode_descriptor(
            "keel_provision_queue_length",
            "Jobs waiting in the pool's provisioning queue",
            None,
            MetricType::Gauge,
        )?;
        for pool in &stats {
            queue
                .encode_family(&[("pool", pool.pool.as_str())])?
                .encode_gauge(&(pool.queue_length as i64))?;
        }

        let mut volumes = encoder.encode_descriptor(
            "keel_provision_volumes",
            "Volumes the provisioner knows, by state",
            None,
            MetricType::Gauge,
        )?;
        for ((pool, state), n) in &by_state {
            volumes
                .encode_family(&[("pool", pool.as_str()), ("state", state)])?
                .encode_gauge(n)?;
        }

        let mut calls = encoder.encode_descriptor(
            "keel_provision_calls",
            "Calls to the pool's storage server, by kind and result",
            None,
            MetricType::Counter,
        )?;
        for pool in &stats {
            for kind in CallKind::ALL {
                for result in CallResult::ALL {
                    calls
                        .encode_family(&[
                            ("pool", pool.pool.as_str()),
                            ("kind", kind.name()),
                            ("result", result.name()),
                        ])?
                        .encode_counter::<NoLabelSet, _, u64>(&pool.calls(kind, result), None)?;
                }
            }
        }

        let mut waited = encoder.encode_descriptor(
            "keel_provision_call_seconds",
            "Time spent inside calls to the pool's storage server (its serialization, as keel \
             sees it)",
            None,
            MetricType::Counter,
        )?;
        for pool in &stats {
            waited
                .encode_family(&[("pool", pool.pool.as_str())])?
                .encode_counter::<NoLabelSet, _, f64>(&pool.time_in_calls.as_secs_f64(), None)?;
        }

        let mut retries = encoder.encode_descriptor(
            "keel_provision_retries",
            "Jobs tried again after a busy server, an unknown outcome or a wait for dependents",
            None,
            MetricType::Counter,
        )?;
        for pool in &stats {
            retries
                .encode_family(&[("pool", pool.pool.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&pool.retries, None)?;
        }

        let mut ready = encoder.encode_descriptor(
            "keel_provision_declaration_to_ready_seconds",
            "Time from a volume's declaration to its LUN's medium being ready",
            None,
            MetricType::Histogram,
        )?;
        for pool in &stats {
            let histogram = &pool.declaration_to_ready;
            let buckets: Vec<(f64, u64)> = READY_BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(histogram.counts)
                .collect();
            ready
                .encode_family(&[("pool", pool.pool.as_str())])?
                .encode_histogram::<NoLabelSet>(
                    histogram.sum.as_secs_f64(),
                    histogram.count,
                    &buckets,
                    None,
                )?;
        }
        Ok(())
    }
}
