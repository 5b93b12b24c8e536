//! `GET /metrics`: Prometheus text (OpenMetrics) through `prometheus-client`, the Prometheus
//! project's own Rust client. Counters live here; gauges that mirror state (VMs by state, pool
//! sizes, uptime) are set from that state at each scrape, so they can never drift from it.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use fireclaw_proto::control::PoolStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route as declared (`/v1/vms/{id}`), never the raw path: ids must not explode the
    /// label space.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImageLabels {
    pub image: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub vms: Family<StateLabels, Gauge>,
    /// VMs handed out from the warm pool (the pool increments this).
    pub handouts: Family<ImageLabels, Counter>,
    /// Requests the pool could not serve from a ready VM (the pool increments this).
    pub misses: Family<ImageLabels, Counter>,
    pub pool_ready: Family<ImageLabels, Gauge>,
    pub pool_target: Family<ImageLabels, Gauge>,
    pub uptime: Gauge<f64, AtomicU64>,
    /// Seconds from a clone's VMM start to its identity refreshed (pool refills and restores).
    pub restore_seconds: Histogram,
    /// Seconds to build a base snapshot (cold boot to snapshot written).
    pub snapshot_build_seconds: Histogram,
    /// Seconds from a cold boot's start to the guest answering SSH (the pool's last fallback).
    pub boot_seconds: Histogram,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0].into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            vms: Family::default(),
            handouts: Family::default(),
            misses: Family::default(),
            pool_ready: Family::default(),
            pool_target: Family::default(),
            uptime: Gauge::default(),
            restore_seconds: Histogram::new(latency_buckets()),
            snapshot_build_seconds: Histogram::new(latency_buckets()),
            boot_seconds: Histogram::new(latency_buckets()),
        };
        if let Ok(mut r) = m.registry.lock() {
            r.register(
                "fireclaw_requests",
                "Control socket requests by route and status",
                m.requests.clone(),
            );
            r.register("fireclaw_vms", "VMs by state", m.vms.clone());
            r.register(
                "fireclaw_pool_handouts",
                "VMs handed out from the warm pool",
                m.handouts.clone(),
            );
            r.register(
                "fireclaw_pool_misses",
                "Requests the warm pool could not serve from a ready VM",
                m.misses.clone(),
            );
            r.register(
                "fireclaw_pool_ready",
                "Warm VMs ready to hand out",
                m.pool_ready.clone(),
            );
            r.register(
                "fireclaw_pool_target",
                "Warm VMs wanted per image ([pool] warm_per_image)",
                m.pool_target.clone(),
            );
            r.register(
                "fireclaw_restore_seconds",
                "Restoring a clone from its snapshot, VMM start to identity refreshed",
                m.restore_seconds.clone(),
            );
            r.register(
                "fireclaw_snapshot_build_seconds",
                "Building a base snapshot, cold boot to snapshot written",
                m.snapshot_build_seconds.clone(),
            );
            r.register(
                "fireclaw_boot_seconds",
                "Cold boots (the pool's last fallback), start to SSH answering",
                m.boot_seconds.clone(),
            );
            r.register(
                "fireclaw_uptime_seconds",
                "Seconds since the runtime started",
                m.uptime.clone(),
            );
        }
        m
    }

    /// The text exposition, with the state gauges set from `vms_by_state` and `pools`.
    pub fn render(
        &self,
        vms_by_state: &BTreeMap<String, u32>,
        pools: &[PoolStatus],
        uptime_secs: f64,
    ) -> String {
        self.vms.clear();
        for (state, n) in vms_by_state {
            self.vms
                .get_or_create(&StateLabels {
                    state: state.clone(),
                })
                .set(i64::from(*n));
        }
        for p in pools {
            let l = ImageLabels {
                image: p.image.clone(),
            };
            self.pool_ready.get_or_create(&l).set(i64::from(p.ready));
            self.pool_target.get_or_create(&l).set(i64::from(p.target));
            // Present from the start, so a rate() over them has a baseline.
            let _ = self.handouts.get_or_create(&l);
            let _ = self.misses.get_or_create(&l);
        }
        self.uptime.set(uptime_secs);
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
                tracing::warn!("encoding metrics: {e}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_states_pools_and_requests() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                method: "GET".into(),
                route: "/v1/health".into(),
                status: 200,
            })
            .inc();
        let mut states = BTreeMap::new();
        states.insert("kept".to_string(), 2);
        let text = m.render(
            &states,
            &[PoolStatus {
                image: "base".into(),
                target: 2,
                ready: 0,
            }],
            1.5,
        );
        for needle in [
            "fireclaw_vms{state=\"kept\"} 2",
            "fireclaw_requests_total{method=\"GET\",route=\"/v1/health\",status=\"200\"} 1",
            "fireclaw_pool_target{image=\"base\"} 2",
            "fireclaw_pool_handouts_total{image=\"base\"} 0",
            "fireclaw_uptime_seconds 1.5",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // A state that went away is not reported as a stale gauge.
        let text = m.render(&BTreeMap::new(), &[], 2.0);
        assert!(!text.contains("state=\"kept\""), "{text}");
    }
}
