//! `POST /v1/run`: a fresh VM for one command, thrown away afterwards. A pooled clone when one
//! is ready (its session is open: the hand-out costs an exec), else a clone restored now, else a
//! cold boot; the answer says which.

use std::time::{Duration, Instant};

use fireclaw_proto::control::{Origin, RunRequest, RunResult};

use super::exec::Capped;
use super::metrics::ImageLabels;
use super::Service;
use crate::net::policy::Policy;
use crate::pool::clone::ClonedVm;
use crate::pool::warm::{recipe_for, POOL_POLICY};
use crate::vm::{ssh, LaunchOptions, Machine};
use crate::vmm::Boot;

const DEFAULT_TIMEOUT_SECS: u64 = 60;

pub enum RunError {
    BadRequest(String),
    Timeout(u64),
    Failed(String),
}

/// A VM of any origin with a session open.
enum Handle {
    Clone(Box<ClonedVm>),
    Cold(Box<Machine>, ssh::Session),
}

impl Handle {
    fn id(&self) -> String {
        match self {
            Handle::Clone(c) => c.id.clone(),
            Handle::Cold(m, _) => m.id.clone(),
        }
    }

    /// The open session (a pooled clone's was opened before the request came).
    fn session(&self) -> Option<&ssh::Session> {
        match self {
            Handle::Clone(c) => c.session.as_ref(),
            Handle::Cold(_, s) => Some(s),
        }
    }

    /// Tears the VM down off the async threads.
    async fn destroy(self) {
        let errors = tokio::task::spawn_blocking(move || match self {
            Handle::Clone(mut c) => (c.id.clone(), c.destroy()),
            Handle::Cold(mut m, s) => {
                drop(s);
                (m.id.clone(), m.destroy())
            }
        })
        .await;
        match errors {
            Ok((id, errors)) => {
                for e in errors {
                    tracing::warn!(vm = %id, "cleanup failed (run `fireclaw gc`): {e}");
                }
            }
            Err(e) => tracing::warn!("VM teardown task failed: {e}"),
        }
    }
}

pub async fn run(service: &Service, req: &RunRequest) -> Result<RunResult, RunError> {
    let started = Instant::now();
    let host = service.host();
    let images = &host.config.images.recipes;
    let image = match &req.image {
        // Only configured names: a request never names a path of its choosing.
        Some(i) if images.contains(i) => i.clone(),
        Some(i) => {
            return Err(RunError::BadRequest(format!(
                "image {i:?} is not one of the runtime's images ({})",
                images.join(", ")
            )))
        }
        None => images
            .first()
            .cloned()
            .ok_or_else(|| RunError::BadRequest("the runtime has no images configured".into()))?,
    };
    let policy = match req.policy.as_deref() {
        None => POOL_POLICY,
        Some(p) => Policy::parse(p).map_err(|e| RunError::BadRequest(e.to_string()))?,
    };
    let secs = req.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    let deadline = started + Duration::from_secs(secs);
    let labels = ImageLabels {
        image: image.clone(),
    };
    let warm = service.warm.as_ref();
    let pooled = if policy == POOL_POLICY {
        warm.and_then(|w| w.take(&image))
    } else {
        None
    };
    let (handle, origin) = match pooled {
        Some(vm) => {
            service.metrics.handouts.get_or_create(&labels).inc();
            (Handle::Clone(Box::new(vm)), Origin::Pool)
        }
        None => {
            service.metrics.misses.get_or_create(&labels).inc();
            let restored = match warm {
                Some(w) => tokio::time::timeout_at(deadline.into(), w.restore_now(&image, policy))
                    .await
                    .map_err(|_| RunError::Timeout(secs))?
                    .map_err(|e| {
                        tracing::warn!(image, "restore failed, booting cold: {e:#}");
                        e
                    })
                    .ok(),
                None => None,
            };
            match restored {
                Some(vm) => (Handle::Clone(Box::new(vm)), Origin::Restore),
                None => {
                    let h = tokio::time::timeout_at(deadline.into(), cold(service, &image, policy))
                        .await
                        .map_err(|_| RunError::Timeout(secs))?
                        .map_err(RunError::Failed)?;
                    (h, Origin::Cold)
                }
            }
        }
    };
    let id = handle.id();
    let command = ssh::shell_join(&req.argv);
    let mut out = Capped::new(super::exec::MAX_OUTPUT_BYTES);
    let mut err = Capped::new(super::exec::MAX_OUTPUT_BYTES);
    let result = match handle.session() {
        Some(session) => {
            tokio::time::timeout_at(deadline.into(), session.exec(&command, &mut out, &mut err))
                .await
                .map(|r| r.map_err(|e| e.to_string()))
        }
        None => Ok(Err("the VM has no open session".to_string())),
    };
    handle.destroy().await;
    if let Some(w) = warm {
        w.forget(&id);
    }
    let exit = match result {
        Err(_) => return Err(RunError::Timeout(secs)),
        Ok(Err(e)) => return Err(RunError::Failed(e)),
        Ok(Ok(exit)) => exit,
    };
    Ok(RunResult {
        vm_id: id,
        origin,
        exit_code: exit.shell_code(),
        truncated: out.cut || err.cut,
        stdout: String::from_utf8_lossy(&out.buf).into_owned(),
        stderr: String::from_utf8_lossy(&err.buf).into_owned(),
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// The last fallback: a cold boot on the bridge, as `fireclaw run` does without a runtime.
async fn cold(service: &Service, image: &str, policy: Policy) -> Result<Handle, String> {
    let host = service.host();
    let recipe = recipe_for(&host, image).map_err(|e| format!("{e:#}"))?;
    let opts = LaunchOptions {
        vmm: recipe.vmm,
        vcpus: recipe.vcpus,
        mem_mib: recipe.mem_mib,
        policy,
        image: recipe.image,
        boot: Boot::Kernel,
        extra_disk: None,
    };
    let t = Instant::now();
    let h = host.clone();
    let machine = tokio::task::spawn_blocking(move || Machine::create(&h, &opts))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{e:#}"))?;
    let target = machine.ssh_target().map_err(|e| format!("{e:#}"))?;
    let session = match ssh::wait_ready(&target, Instant::now() + Duration::from_secs(180)).await {
        Ok(s) => s,
        Err(e) => {
            let tail = machine.console_tail();
            let mut m = machine;
            let _ = tokio::task::spawn_blocking(move || m.destroy()).await;
            return Err(format!("{e}\n{tail}"));
        }
    };
    service
        .metrics
        .boot_seconds
        .observe(t.elapsed().as_secs_f64());
    Ok(Handle::Cold(Box::new(machine), session))
}
