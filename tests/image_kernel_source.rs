//! Host tier: the pinned kernel source tarball (Debian's linux-source-6.1, .tar.xz) unpacks through
//! fireclaw's safe extractor (not `tar -xJf`) into the tree the kernel build expects. Extraction
//! only: no kernel is compiled here.

mod support;

use std::path::Path;
use std::time::Instant;

use fireclaw::archive::{extract_all, ExtractPolicy};
use fireclaw::image::kernel;
use fireclaw::report::Silent;

#[test]
#[ignore = "host tier: needs the linux-source-6.1 package and ~1.5 GB of disk; run with --include-ignored"]
fn the_pinned_kernel_source_extracts_safely() {
    let src = kernel::load_source(&kernel::embedded()).unwrap();
    let tarball = Path::new(&src.source.path);
    support::require(
        "host",
        &[(
            "the pinned kernel source (apt-get install linux-source-6.1)",
            tarball.is_file(),
        )],
    );
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let stats = extract_all(tarball, dir.path(), ExtractPolicy::FILES, &Silent)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "extracted {} entries, {} MiB in {:.1}s",
        stats.entries,
        stats.bytes >> 20,
        started.elapsed().as_secs_f64()
    );
    let top = dir.path().join(&src.source.dir);
    for f in [
        "Makefile",
        "scripts/kconfig/merge_config.sh",
        "arch/x86/Kconfig",
    ] {
        assert!(top.join(f).is_file(), "{f} missing under {}", top.display());
    }
    assert!(stats.entries > 50_000, "{stats:?}");
}
