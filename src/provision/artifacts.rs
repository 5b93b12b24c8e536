//! Guest kernel, rootfs images and the thin pool: the artefacts VMs are made from.

use crate::plan::{Action, Ctx, Step, StepPlan};
use crate::root::RootPrefix;

pub struct Kernel;
pub struct Images;
pub struct ThinPoolStep;

pub fn kernel_path(ctx: &Ctx) -> String {
    format!("{}/vmlinux", ctx.config.paths.image_dir)
}

impl Step for Kernel {
    fn name(&self) -> &'static str {
        "kernel"
    }

    fn summary(&self) -> &'static str {
        "guest kernel built from kernel/ (pinned source, fireclaw's config)"
    }

    fn plan(&self, ctx: &Ctx) -> anyhow::Result<StepPlan> {
        let out = kernel_path(ctx);
        if ctx.host(&out).is_file() {
            return Ok(StepPlan::default());
        }
        Ok(StepPlan::with_actions(vec![Action::Build {
            id: "kernel".into(),
            description: format!(
                "build the guest kernel (`fireclaw image build kernel`) into {out}"
            ),
            outputs: vec![out],
        }]))
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
        let mut actions = Vec::new();
        for recipe in &ctx.config.images.recipes {
            let out = format!("{}/{recipe}.ext4", ctx.config.paths.image_dir);
            if !ctx.host(&out).is_file() {
                actions.push(Action::Build {
                    id: format!("image:{recipe}"),
                    description: format!("build image {recipe:?} from rootfs-recipes/{recipe}.toml into {out} (+ {recipe}.manifest.json)"),
                    outputs: vec![out.clone(), format!("{}/{recipe}.manifest.json", ctx.config.paths.image_dir)],
                });
            }
        }
        Ok(StepPlan::with_actions(actions))
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

pub fn run_build(_root: &RootPrefix, id: &str) -> anyhow::Result<()> {
    anyhow::bail!("builder {id:?} is not part of this build of fireclaw yet; run provision with --skip kernel,images")
}
