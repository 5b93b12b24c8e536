//! Guest kernel, rootfs images and the thin pool: the artefacts VMs are made from.

use anyhow::Context as _;

use crate::config::Config;
use crate::image;
use crate::plan::{Action, Check, Ctx, Step, StepPlan};
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

/// A build that needs the Alpine mirror and has none would fail halfway through apply: a blocked
/// check per such image instead.
fn mirror_checks(targets: &[image::Target], mirror: Option<&str>) -> Vec<Check> {
    let mut checks = Vec::new();
    for t in targets.iter().filter(|t| !t.up_to_date()) {
        let image::Target::Image(p) = t else { continue };
        let image::recipe::Source::AlpineMinirootfs { url, .. } = &p.recipe.source else {
            continue;
        };
        if let Err(e) = image::build::substitute_mirror(url, mirror) {
            checks.push(Check {
                name: format!("image {}: Alpine mirror", p.name),
                ok: false,
                detail: format!("{e:#}"),
                fix: Some(format!(
                    "set `alpine_mirror` under [images] in fireclaw.toml (the default is {}), or FIRECLAW_ALPINE_MIRROR",
                    crate::config::DEFAULT_ALPINE_MIRROR
                )),
                required: true,
            });
        }
    }
    checks
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
        let opts = options(ctx.root, ctx.config)?;
        // Recipe by recipe, so that an image that cannot be planned yet (no static guest agent
        // built) blocks the step with the fix while the others still show what they would do.
        let mut targets = Vec::new();
        let mut blocked = Vec::new();
        for name in &ctx.config.images.recipes {
            match image::plan(&opts, std::slice::from_ref(name)) {
                Ok(t) => targets.extend(t),
                Err(e) => match e.downcast_ref::<image::guest_agent::Unavailable>() {
                    Some(why) => blocked.push(Check {
                        name: format!("image {name}"),
                        ok: false,
                        detail: why.to_string(),
                        fix: Some(format!(
                            "rustup target add {} && {} (install.sh does this and installs it \
                             beside fireclaw), or leave `{name}` out of [images] recipes",
                            image::guest_agent::TARGET,
                            image::guest_agent::BUILD_HINT
                        )),
                        required: true,
                    }),
                    None => return Err(e),
                },
            }
        }
        let mut plan = StepPlan::with_actions(
            targets
                .iter()
                .filter_map(|t| build_action(ctx, format!("image:{}", t.name()), t))
                .collect(),
        );
        plan.checks
            .extend(mirror_checks(&targets, opts.alpine_mirror.as_deref()));
        plan.checks.extend(blocked);
        Ok(plan)
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
pub fn run_build(
    root: &RootPrefix,
    config: &Config,
    id: &str,
    reporter: &dyn crate::report::Reporter,
) -> anyhow::Result<()> {
    let name = match id {
        "kernel" => image::KERNEL,
        other => other
            .strip_prefix("image:")
            .with_context(|| format!("unknown builder {other:?}"))?,
    };
    let opts = options(root, config)?;
    for target in image::plan(&opts, &[name.to_string()])? {
        image::build(&opts, &target, reporter)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Images planned with no Alpine mirror block the plan (with the fix) instead of failing
    /// during apply; with the default mirror they do not.
    #[test]
    fn alpine_images_without_a_mirror_block() {
        let dir = tempfile::tempdir().unwrap();
        let root = RootPrefix::new(dir.path());
        let config = Config::default();
        assert_eq!(
            config.images.alpine_mirror,
            crate::config::DEFAULT_ALPINE_MIRROR
        );
        let opts = image::BuildOptions::from_config(&root, &config);
        let targets = image::plan(&opts, &["base".to_string()]).unwrap();
        let blocked = mirror_checks(&targets, None);
        assert_eq!(blocked.len(), 1, "{blocked:?}");
        assert!(blocked[0].required && !blocked[0].ok);
        assert!(blocked[0]
            .fix
            .as_deref()
            .is_some_and(|f| f.contains("alpine_mirror") && f.contains("dl-cdn")));
        assert!(mirror_checks(&targets, Some(crate::config::DEFAULT_ALPINE_MIRROR)).is_empty());
    }
}
