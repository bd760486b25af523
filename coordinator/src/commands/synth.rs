//! `multir synth`: synthetic chest-CT phantoms with exact ground truth.

use std::time::Instant;

use multir_common::synth::{self, PhantomConfig};

use crate::cli::SynthArgs;

pub fn run(args: SynthArgs) -> anyhow::Result<()> {
    let cfg = if args.scale == 1.0 {
        PhantomConfig::default()
    } else {
        PhantomConfig::scaled(args.scale)?
    };
    let t = Instant::now();
    tracing::info!(scans = args.scans, seed = args.seed, out = %args.out.display(), "writing phantoms");
    // Progress roughly every tenth of the cohort, and always at the end.
    let step = (args.scans / 10).max(1);
    let manifest = synth::write_cohort(&args.out, args.scans, args.seed, &cfg, |done, n| {
        if done % step == 0 || done == n {
            tracing::info!("{done}/{n} scans written");
        }
    })?;
    let [covid, cap, healthy] = manifest.label_counts();
    tracing::info!(
        "wrote {} scans ({covid} covid, {cap} cap, {healthy} healthy) in {:.1} s; manifest: {}",
        manifest.len(),
        t.elapsed().as_secs_f64(),
        args.out.join("manifest.csv").display()
    );
    Ok(())
}
