//! The seam the warm pool plugs into. Until it exists, [`NoPool`] reports each configured image
//! with its target and nothing ready, so `status`, `/v1/status` and `/metrics` already have the
//! shape they will keep.

use fireclaw_proto::control::{Origin, PoolStatus};
use futures::future::BoxFuture;

use crate::config::Config;

/// What the runtime needs from a warm pool.
pub trait WarmPool: Send + Sync {
    /// Per image: target and ready count.
    fn status(&self, config: &Config) -> Vec<PoolStatus>;
    /// The `[pool]` section changed (SIGHUP): grow or shrink towards the new targets.
    fn resize(&self, config: &Config);
    /// How a VM the runtime made came to be; `None` for VMs it did not make.
    fn origin_of(&self, vm_id: &str) -> Option<Origin>;
    /// The runtime is stopping: destroy the pooled VMs (never agents).
    fn shutdown(&self) -> BoxFuture<'_, ()>;
}

/// No pool yet: targets from the configuration, nothing ready, nothing to destroy.
pub struct NoPool;

impl WarmPool for NoPool {
    fn status(&self, config: &Config) -> Vec<PoolStatus> {
        config
            .images
            .recipes
            .iter()
            .map(|image| PoolStatus {
                image: image.clone(),
                target: config.pool.warm_per_image,
                ready: 0,
            })
            .collect()
    }

    fn resize(&self, _config: &Config) {}

    fn origin_of(&self, _vm_id: &str) -> Option<Origin> {
        None
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The warm pool of [`crate::pool::warm`], as the runtime reports and stops it.
pub struct Warm(pub std::sync::Arc<crate::pool::warm::Pool>);

impl WarmPool for Warm {
    fn status(&self, _config: &Config) -> Vec<PoolStatus> {
        self.0
            .status()
            .into_iter()
            .map(|s| PoolStatus {
                image: s.image,
                target: s.target,
                ready: s.ready,
            })
            .collect()
    }

    fn resize(&self, config: &Config) {
        self.0.resize(config);
    }

    fn origin_of(&self, vm_id: &str) -> Option<Origin> {
        self.0.pooled(vm_id).map(|pooled| {
            if pooled {
                Origin::Pool
            } else {
                Origin::Restore
            }
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        let pool = self.0.clone();
        Box::pin(async move {
            if let Err(e) = tokio::task::spawn_blocking(move || pool.shutdown()).await {
                tracing::warn!("stopping the warm pool: {e}");
            }
        })
    }
}
