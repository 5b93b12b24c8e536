//! SIGHUP: re-read the configuration. The `[pool]` and `[agents]` sections (and the agent
//! templates kept warm) take effect at once; other sections need a restart (the bridge, paths and tables are in use) and are reported, not applied. A file
//! that does not parse or validate is refused and the configuration in effect is kept.

use crate::config::{Config, Pool};

use super::Service;

/// What changed in `[pool]`, one `key: old -> new` per changed key.
pub fn pool_changes(old: &Pool, new: &Pool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cmp = |key: &str, a: String, b: String| {
        if a != b {
            out.push(format!("pool.{key}: {a} -> {b}"));
        }
    };
    cmp(
        "warm_per_image",
        old.warm_per_image.to_string(),
        new.warm_per_image.to_string(),
    );
    cmp("max_vms", old.max_vms.to_string(), new.max_vms.to_string());
    cmp("vcpus", old.vcpus.to_string(), new.vcpus.to_string());
    cmp("mem_mib", old.mem_mib.to_string(), new.mem_mib.to_string());
    out
}

/// Sections other than `[pool]` that differ: they apply at the next start.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.paths != new.paths {
        out.push("paths");
    }
    if old.network != new.network {
        out.push("network");
    }
    if old.firecracker != new.firecracker {
        out.push("firecracker");
    }
    if old.irc != new.irc {
        out.push("irc");
    }
    if old.ollama != new.ollama {
        out.push("ollama");
    }
    if old.thinpool != new.thinpool {
        out.push("thinpool");
    }
    if old.images != new.images {
        out.push("images");
    }
    out
}

/// Reloads the configuration into `service`; returns whether anything was applied.
pub fn reload(service: &Service) -> bool {
    // The same check of `[images] recipes` as at start: only the built-in recipes exist.
    let recipes = crate::image::recipe::embedded().names().unwrap_or_default();
    let new = match Config::load(&service.root, service.config_path.as_deref(), &recipes) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                "SIGHUP: refusing the new configuration, keeping the one in effect: {e}"
            );
            return false;
        }
    };
    let old = service.host().config;
    let changes = pool_changes(&old.pool, &new.pool);
    let later = restart_only_changes(&old, &new);
    if !later.is_empty() {
        tracing::warn!(
            "SIGHUP: changes to [{}] take effect at the next start of the runtime; not applied now",
            later.join("], [")
        );
    }
    let agents_changed = old.agents != new.agents;
    let pool_changed = !changes.is_empty();
    let mut applied = old;
    applied.agents = new.agents;
    applied.pool = new.pool;
    if agents_changed || pool_changed {
        service.set_config(applied.clone());
    }
    if agents_changed {
        tracing::info!("SIGHUP: [agents] applied");
    }
    for c in &changes {
        tracing::info!("SIGHUP: {c}");
    }
    if pool_changed {
        service.pool.resize(&applied);
    } else {
        tracing::info!("SIGHUP: configuration reloaded; [pool] unchanged");
    }
    // Templates may have changed on disk as well: the warm agents are looked up again.
    if let Some(warm) = &service.warm {
        super::set_agent_wants(&service.host(), warm);
    }
    agents_changed || pool_changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_named_with_old_and_new_values() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(pool_changes(&old.pool, &new.pool).is_empty());
        new.pool.warm_per_image = 5;
        new.network.bridge = "br9".into();
        assert_eq!(
            pool_changes(&old.pool, &new.pool),
            vec!["pool.warm_per_image: 2 -> 5".to_string()]
        );
        assert_eq!(restart_only_changes(&old, &new), vec!["network"]);
    }
}
