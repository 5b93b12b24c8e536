//! Guest kernel, rootfs images and the thin pool: the artefacts VMs are made from.

use anyhow::Context as _;

use crate::config::Config;
use crate::image;
use crate::plan::{Action, Ctx, Step, StepPlan};
use crate::root::RootPrefix;

pub struct Kernel;
pub struct Images;
pub struct ThinPoolStep;

/// Builder-owned directories under the cache (see `image::build` and `image::kernel`).
const BUILDER_SCRATCH: &[&str] = &["staging", "hostkeys", "kernel-src"];

/// A plan action for one builder target, or nothing when the target is up to date.
fn build_action(ctx: &Ctx, id: String, target: &image::Target) -> Option<Action> {
    if target.up_to_date() {
        return None;
    }
    let host = |p: &std::path::Path| ctx.root.display(p);
    let cache = ctx.config.paths.cache_dir.trim_end_matches('/');
    let scratch = BUILDER_SCRATCH
        .iter()
        .map(|d| format!("{cache}/{d}"))
        .filter(|d| !ctx.host(d).exists())
        .collect();
    // Only what this build creates is journaled: a kernel or image that is already there (built
    // by hand with `fireclaw image build`) is replaced, and uninstall does not delete it.
    let mut outputs: Vec<String> = target
        .outputs()
        .iter()
        .filter(|p| !p.exists())
        .map(|p| host(p))
        .collect();
    outputs.extend(
        target
            .downloads(&ctx.host(cache))
            .iter()
            .map(|p| host(p))
            .filter(|p| !ctx.host(p).exists()),
    );
    ctx.planned_files
        .borrow_mut()
        .extend(target.outputs().iter().map(|p| host(p)));
    Some(Action::Build {
        id,
        description: format!("build {}", target.describe()),
        outputs,
        scratch,
    })
}

fn options(root: &RootPrefix, config: &Config) -> anyhow::Result<image::BuildOptions> {
    let mut o = image::BuildOptions::from_config(root, config);
    // FIRECLAW_ALPINE_MIRROR and SOURCE_DATE_EPOCH apply to provision as to `fireclaw image build`.
    o.env_overrides(&|k| std::env::var(k).ok())?;
    Ok(o)
}

impl Step for Kernel {
    fn name(&self) -> &'static str {
        "kernel"
    }

    fn summary(&self) -> &'static str {
        "guest kernel built from kernel/ (pinned source, fireclaw's config)"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        let targets = image::plan(
            &options(ctx.root, ctx.config)?,
            &[image::KERNEL.to_string()],
        )?;
        Ok(StepPlan::with_actions(
            targets
                .iter()
                .filter_map(|t| build_action(ctx, image::KERNEL.to_string(), t))
                .collect(),
        ))
    }
}

impl Step for Images {
    fn name(&self) -> &'static str {
        "images"
    }

    fn summary(&self) -> &'static str {
        "rootfs images from rootfs-recipes/ (mkfs.ext4 -d, e2fsck-verified)"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        let targets = image::plan(&options(ctx.root, ctx.config)?, &ctx.config.images.recipes)?;
        Ok(StepPlan::with_actions(
            targets
                .iter()
                .filter_map(|t| build_action(ctx, format!("image:{}", t.name()), t))
                .collect(),
        ))
    }
}

impl Step for ThinPoolStep {
    fn name(&self) -> &'static str {
        "thinpool"
    }

    fn summary(&self) -> &'static str {
        "device-mapper thin pool on loop-backed sparse files, one thin volume per image"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        super::thinpool::plan(ctx)
    }
}

/// Executes a `Build` action: re-plans the target (the key pair and sources now exist) and builds it.
pub fn run_build(root: &RootPrefix, config: &Config, id: &str) -> anyhow::Result<()> {
    let name = match id {
        "kernel" => image::KERNEL,
        other => other
            .strip_prefix("image:")
            .with_context(|| format!("unknown builder {other:?}"))?,
    };
    let opts = options(root, config)?;
    for target in image::plan(&opts, &[name.to_string()])? {
        image::build(&opts, &target, &crate::report::Tracing)?;
    }
    Ok(())
}
