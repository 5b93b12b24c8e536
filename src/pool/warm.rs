//! The warm pool: per image, `[pool] warm_per_image` clones restored ahead of time, each with its
//! SSH session open and its identity refreshed, handed out once and destroyed after use (never
//! returned: a used guest is no longer a clean one).
//!
//! One background task ([`Pool::refill`]) restores one clone at a time (these machines have two
//! cores, and a restore is mostly CPU), notices pooled clones whose VMM died and replaces them,
//! and backs off from an image whose snapshot or restore keeps failing. A request the pool cannot
//! serve falls back to a restore on the spot ([`Pool::restore_now`]), and the caller falls back to
//! a cold boot when that fails too.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::clone::{slot_config, ClonedVm};
use super::snapshot::{self, Recipe, Snapshot};
use crate::config::Config;
use crate::net::policy::Policy;
use crate::net::slot::SlotPool;
use crate::vm::image::{self, Overrides};
use crate::vm::Host;
use crate::vmm::VmmKind;

/// Pooled clones are made before anyone asks: they get the policy `fireclaw run` defaults to.
/// A request for another policy is served by a restore.
pub const POOL_POLICY: Policy = Policy::Full;

/// How long a restore or a snapshot's boot may take to answer SSH.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The per-image state the pool keeps.
#[derive(Default)]
struct ImagePool {
    ready: VecDeque<ClonedVm>,
    snapshot: Option<Snapshot>,
    /// Slots for clones of `snapshot` (its tap and addresses): replaced with the snapshot.
    slots: Option<Arc<Mutex<SlotPool>>>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

/// Latencies the runtime exports, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub enum Event {
    /// A clone restored (VMM start to identity refreshed).
    Restored { ms: u64 },
    /// A snapshot built (cold boot to snapshot written).
    SnapshotBuilt { ms: u64 },
}

pub struct Pool {
    host: Mutex<Host>,
    /// By key: an image name (clones for `fireclaw run`) or an [`AgentWant`]'s key.
    images: Mutex<BTreeMap<String, ImagePool>>,
    /// What the agent system wants kept ready, by key (set by the runtime from `[agents] warm`).
    agents: Mutex<BTreeMap<String, AgentWant>>,
    wake: tokio::sync::Notify,
    stopping: AtomicBool,
    /// Ids of clones the pool holds or handed out, by how they came to be.
    handed: Mutex<HashMap<String, bool>>,
    events: Box<dyn Fn(Event) + Send + Sync>,
}

/// What [`Pool::status`] reports per image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageStatus {
    pub image: String,
    pub target: u32,
    pub ready: u32,
}

impl Pool {
    pub fn new(host: Host, events: impl Fn(Event) + Send + Sync + 'static) -> Pool {
        Pool {
            host: Mutex::new(host),
            images: Mutex::new(BTreeMap::new()),
            agents: Mutex::new(BTreeMap::new()),
            wake: tokio::sync::Notify::new(),
            stopping: AtomicBool::new(false),
            handed: Mutex::new(HashMap::new()),
            events: Box::new(events),
        }
    }

    fn host(&self) -> Host {
        lock(&self.host).clone()
    }

    /// The keys the pool serves and how many ready clones each: the configuration's images,
    /// then the agents' wants.
    fn wanted(&self) -> Vec<(String, u32)> {
        let host = self.host();
        let target = host.config.pool.warm_per_image;
        let mut keys: Vec<(String, u32)> = host
            .config
            .images
            .recipes
            .iter()
            .map(|i| (i.clone(), target))
            .collect();
        keys.extend(lock(&self.agents).keys().map(|k| (k.clone(), AGENT_TARGET)));
        keys
    }

    fn target_of(&self, key: &str) -> u32 {
        self.wanted()
            .into_iter()
            .find(|(k, _)| k == key)
            .map_or(0, |(_, t)| t)
    }

    pub fn status(&self) -> Vec<ImageStatus> {
        let images = lock(&self.images);
        self.wanted()
            .into_iter()
            .map(|(name, target)| ImageStatus {
                ready: images.get(&name).map_or(0, |p| p.ready.len() as u32),
                image: name,
                target,
            })
            .collect()
    }

    /// What the agent system wants kept ready (the runtime's start and every SIGHUP). A key whose
    /// recipe or policy changed loses its ready clones and snapshot; keys no longer wanted are
    /// emptied.
    pub fn set_agent_wants(&self, wants: Vec<AgentWant>) {
        let mut surplus = Vec::new();
        {
            // Lock order, everywhere: `images`, then `agents`.
            let mut images = lock(&self.images);
            let mut agents = lock(&self.agents);
            let new: BTreeMap<String, AgentWant> =
                wants.into_iter().map(|w| (w.key.clone(), w)).collect();
            for (key, old) in agents.iter() {
                if new.get(key).is_some_and(|w| w.same_as(old)) {
                    continue;
                }
                if let Some(p) = images.remove(key) {
                    surplus.extend(p.ready);
                }
            }
            *agents = new;
        }
        for vm in surplus {
            self.forget(&vm.id);
            discard(vm);
        }
        self.wake.notify_one();
    }

    /// `Some(true)` for a VM handed out of (or waiting in) the pool, `Some(false)` for one
    /// restored on demand; `None` for VMs the pool did not make.
    pub fn pooled(&self, vm_id: &str) -> Option<bool> {
        lock(&self.handed).get(vm_id).copied()
    }

    /// The configuration changed (SIGHUP): new targets; surplus ready clones are destroyed.
    pub fn resize(&self, config: &Config) {
        lock(&self.host).config = config.clone();
        let wanted = self.wanted();
        let mut surplus = Vec::new();
        {
            let mut images = lock(&self.images);
            for (name, p) in images.iter_mut() {
                let keep = wanted
                    .iter()
                    .find(|(k, _)| k == name)
                    .map_or(0, |(_, t)| *t as usize);
                while p.ready.len() > keep {
                    if let Some(vm) = p.ready.pop_back() {
                        surplus.push(vm);
                    }
                }
            }
        }
        for vm in surplus {
            self.forget(&vm.id);
            discard(vm);
        }
        self.wake.notify_one();
    }

    /// A ready clone of `image` (its session open), if the pool has one; the refill task is
    /// woken to replace it.
    pub fn take(&self, image: &str) -> Option<ClonedVm> {
        let vm = lock(&self.images)
            .get_mut(image)
            .and_then(|p| p.ready.pop_front());
        self.wake.notify_one();
        vm
    }

    /// The caller is done with a clone the pool made: it is destroyed, never returned.
    pub fn forget(&self, vm_id: &str) {
        lock(&self.handed).remove(vm_id);
    }

    /// A clone of `image` restored now, for a request the pool could not serve.
    pub async fn restore_now(&self, image: &str, policy: Policy) -> anyhow::Result<ClonedVm> {
        let (snap, slots) = self.snapshot_for(image).await?;
        let vm = self.restore(&snap, slots, policy).await?;
        lock(&self.handed).insert(vm.id.clone(), false);
        Ok(vm)
    }

    async fn restore(
        &self,
        snap: &Snapshot,
        slots: Arc<Mutex<SlotPool>>,
        policy: Policy,
    ) -> anyhow::Result<ClonedVm> {
        let host = self.host();
        let s = snap.clone();
        let t = Instant::now();
        let mut vm = tokio::task::spawn_blocking(move || {
            let mut slots = lock(&slots);
            ClonedVm::start(&host, &s, &mut slots, policy)
        })
        .await??;
        vm.ready(READY_TIMEOUT).await?;
        (self.events)(Event::Restored {
            ms: t.elapsed().as_millis() as u64,
        });
        Ok(vm)
    }

    /// The image's snapshot (built or rebuilt when missing or refused) and its slots.
    async fn snapshot_for(&self, image: &str) -> anyhow::Result<(Snapshot, Arc<Mutex<SlotPool>>)> {
        if let Some(p) = lock(&self.images).get(image) {
            if let (Some(s), Some(sl)) = (&p.snapshot, &p.slots) {
                return Ok((s.clone(), sl.clone()));
            }
        }
        let host = self.host();
        let wanted = lock(&self.agents).get(image).map(|w| w.recipe.clone());
        let recipe = match wanted {
            Some(r) => r,
            None => recipe_for(&host, image)?,
        };
        let t = Instant::now();
        let (snap, refused) = snapshot::ensure(&host, &recipe, READY_TIMEOUT).await?;
        if let Some(why) = refused {
            tracing::warn!(image, "{why}");
        } else if t.elapsed() > Duration::from_secs(1) {
            (self.events)(Event::SnapshotBuilt {
                ms: t.elapsed().as_millis() as u64,
            });
        }
        let slots = Arc::new(Mutex::new(SlotPool::new(
            host.db()?,
            slot_config(&host, &snap)?,
        )?));
        let mut images = lock(&self.images);
        let p = images.entry(image.to_string()).or_default();
        p.snapshot = Some(snap.clone());
        p.slots = Some(slots.clone());
        Ok((snap, slots))
    }

    /// The background task: keeps every image at its target, one restore at a time, until
    /// [`Pool::shutdown`].
    pub async fn refill(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopping.load(Ordering::SeqCst) {
            self.reap_dead();
            match self.next_to_fill() {
                Some(image) => self.fill_one(&image).await,
                None => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        _ = tick.tick() => {}
                    }
                }
            }
        }
    }

    fn next_to_fill(&self) -> Option<String> {
        let wanted = self.wanted();
        let images = lock(&self.images);
        let now = Instant::now();
        wanted
            .into_iter()
            .find(|(name, target)| {
                let target = *target as usize;
                match images.get(name) {
                    None => target > 0,
                    Some(p) => p.ready.len() < target && p.retry_at.is_none_or(|t| t <= now),
                }
            })
            .map(|(name, _)| name)
    }

    async fn fill_one(&self, image: &str) {
        let policy = lock(&self.agents)
            .get(image)
            .map_or(POOL_POLICY, |w| w.policy);
        let result = async {
            let (snap, slots) = self.snapshot_for(image).await?;
            self.restore(&snap, slots, policy).await
        }
        .await;
        let mut images = lock(&self.images);
        let p = images.entry(image.to_string()).or_default();
        match result {
            // Wanted no more (or for another recipe) while it was restored.
            Ok(vm) if self.target_of(image) == 0 => {
                drop(images);
                discard(vm);
            }
            Ok(vm) if !self.stopping.load(Ordering::SeqCst) => {
                if lock(&self.agents).contains_key(image) {
                    tracing::info!("warm pool: {image} ready (VM {})", vm.id);
                } else {
                    tracing::debug!(image, vm = %vm.id, "pooled clone ready");
                }
                lock(&self.handed).insert(vm.id.clone(), true);
                p.ready.push_back(vm);
                p.failures = 0;
                p.retry_at = None;
                p.last_error = None;
            }
            Ok(vm) => {
                drop(images);
                discard(vm);
            }
            Err(e) => {
                p.failures += 1;
                // 2 s, 4 s, ... up to 5 minutes: a missing image must not keep the CPUs busy.
                let wait = Duration::from_secs(2u64.saturating_pow(p.failures).min(300));
                p.retry_at = Some(Instant::now() + wait);
                let msg = format!("{e:#}");
                if p.last_error.as_deref() != Some(&msg) {
                    tracing::warn!(
                        image,
                        "refilling the warm pool failed (retrying in {wait:?}): {msg}"
                    );
                }
                p.last_error = Some(msg);
                // A snapshot that failed to restore may be the cause: look it up again next time.
                p.snapshot = None;
                p.slots = None;
            }
        }
    }

    /// Pooled clones whose VMM died are removed (and so replaced by the refill).
    fn reap_dead(&self) {
        let mut dead = Vec::new();
        {
            let mut images = lock(&self.images);
            for (name, p) in images.iter_mut() {
                let mut i = 0;
                while i < p.ready.len() {
                    if let Some(why) = p.ready[i].vmm_exited() {
                        tracing::warn!(image = %name, vm = %p.ready[i].id, "pooled VM died ({why}); replacing it");
                        if let Some(vm) = p.ready.remove(i) {
                            dead.push(vm);
                        }
                    } else {
                        i += 1;
                    }
                }
            }
        }
        for vm in dead {
            self.forget(&vm.id);
            discard(vm);
        }
    }

    /// Stops refilling and destroys every pooled clone and prepared slot.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let drained: Vec<ImagePool> = std::mem::take(&mut *lock(&self.images))
            .into_values()
            .collect();
        for p in drained {
            for vm in p.ready {
                self.forget(&vm.id);
                discard(vm);
            }
            if let Some(slots) = p.slots {
                if let Ok(m) = Arc::try_unwrap(slots) {
                    let pool = m.into_inner().unwrap_or_else(|e| e.into_inner());
                    if let Err(e) = pool.close() {
                        tracing::warn!("closing clone slots: {e}");
                    }
                }
            }
        }
    }
}

/// Ready clones kept per agent want: an `!invoke` takes one, and the refill restores the next.
const AGENT_TARGET: u32 = 1;

/// A kind of agent the pool keeps one clone of, ready: restored from a snapshot with a
/// workspace drive, in a slot with the agent's network policy, its guest agent waiting for its
/// configuration.
#[derive(Clone)]
pub struct AgentWant {
    /// `agent:TEMPLATE`.
    pub key: String,
    pub recipe: Recipe,
    pub policy: Policy,
}

impl AgentWant {
    pub fn key_for(template: &str) -> String {
        format!("agent:{template}")
    }

    fn same_as(&self, other: &AgentWant) -> bool {
        self.recipe.key() == other.recipe.key()
            && self.recipe.image.kernel == other.recipe.image.kernel
            && self.policy == other.policy
    }
}

/// The recipe for `image` on this host: the engine `run` would pick, the configured size.
pub fn recipe_for(host: &Host, image: &str) -> anyhow::Result<Recipe> {
    let spec = image::resolve(
        image,
        &host.root.host(&host.config.paths.image_dir),
        &Overrides::default(),
    )?;
    let fc = host
        .root
        .host(&host.config.paths.bin_dir)
        .join("firecracker");
    Ok(Recipe {
        image: spec,
        vmm: if fc.exists() {
            VmmKind::Firecracker
        } else {
            VmmKind::Qemu
        },
        vcpus: host.config.pool.vcpus,
        mem_mib: host.config.pool.mem_mib,
        workspace_mib: 0,
    })
}

/// Destroys a clone, logging what could not be removed.
fn discard(mut vm: ClonedVm) {
    for e in vm.destroy() {
        tracing::warn!(vm = %vm.id, "cleanup failed (run `fireclaw gc`): {e}");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
