//! Command-line options shared by the `multir` and `multir-worker`
//! binaries, defined once and flattened into each command (feature `cli`).
//! Every option has an environment fallback so pods are configured by env.

use crate::device::DeviceRequest;
use crate::io::{DEFAULT_MAX_VOXELS, LoadOptions};
use crate::model::{InferenceConfig, Stitch};
use std::path::PathBuf;

/// How volumes are loaded.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Refuse any volume whose header implies more voxels than this
    /// (checked before anything is allocated).
    #[arg(long, env = "MULTIR_MAX_VOXELS", default_value_t = DEFAULT_MAX_VOXELS)]
    pub max_voxels: u64,
    /// DICOM: the SeriesInstanceUID to load when a folder holds several.
    #[arg(long, env = "MULTIR_SERIES_UID")]
    pub series_uid: Option<String>,
}

impl LoadArgs {
    /// The loader options these arguments describe.
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            max_voxels: self.max_voxels,
            series_uid: self.series_uid.clone(),
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// auto (CUDA when usable, else CPU), cpu or cuda.
    #[arg(long, env = "MULTIR_DEVICE", default_value = "auto")]
    pub device: DeviceRequest,
}

/// How whole scans are run through the model.
#[derive(Debug, Clone, clap::Args)]
pub struct InferArgs {
    /// Model checkpoint (.safetensors); default: the shipped small model.
    #[arg(long, env = "MULTIR_CHECKPOINT")]
    pub checkpoint: Option<PathBuf>,
    /// Fractional overlap of neighbouring windows, in [0, 0.95).
    #[arg(long, env = "MULTIR_OVERLAP", default_value_t = 0.25, value_parser = parse_overlap)]
    pub overlap: f64,
    /// Windows per forward pass, 1 to 1024.
    #[arg(long, env = "MULTIR_WINDOW_BATCH", default_value_t = 4, value_parser = parse_window_batch)]
    pub window_batch: usize,
    /// Average each window over its 8 mirrorings (8x slower).
    #[arg(long, env = "MULTIR_TTA")]
    pub tta: bool,
    /// fp16 autocast on CUDA (no effect on the CPU).
    #[arg(long, env = "MULTIR_MIXED_PRECISION")]
    pub mixed_precision: bool,
    /// Where windows are blended: auto, device or host.
    #[arg(long, env = "MULTIR_STITCH", default_value = "auto")]
    pub stitch: Stitch,
    /// Lesion probability threshold of the mask, strictly between 0 and 1.
    #[arg(long, env = "MULTIR_THRESHOLD", default_value_t = 0.5, value_parser = parse_threshold)]
    pub threshold: f32,
    /// Keep predicted lesions that touch no lung; by default they are
    /// removed (and their volume reported as `lesion_removed_ml`).
    #[arg(long, env = "MULTIR_KEEP_LESIONS_OUTSIDE_LUNGS")]
    pub keep_lesions_outside_lungs: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub device: DeviceArgs,
}

impl InferArgs {
    /// The inference settings these arguments describe.
    pub fn config(&self, gradcam: bool) -> InferenceConfig {
        InferenceConfig {
            overlap: self.overlap,
            batch: self.window_batch,
            tta: self.tta,
            mixed_precision: self.mixed_precision,
            stitch: self.stitch,
            threshold: self.threshold,
            gradcam,
            ..InferenceConfig::default()
        }
    }
}

/// Logging.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log line format: text, or json for log collectors.
    #[arg(long, env = "MULTIR_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"], global = true)]
    pub log_format: String,
}

impl LogArgs {
    /// Installs the global tracing subscriber, writing to stderr so stdout
    /// stays clean for JSON output. `RUST_LOG` overrides the level.
    pub fn init(&self) {
        self.init_with(std::io::stderr);
    }

    /// [`LogArgs::init`] with another writer (one that keeps a progress bar
    /// intact, for example). Colour codes are written only when stderr is a
    /// terminal, so logs redirected to a file stay plain text.
    pub fn init_with<W>(&self, writer: W)
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        use std::io::IsTerminal;
        use tracing_subscriber::EnvFilter;
        let level = match (self.quiet, self.verbose) {
            (true, _) => "warn",
            (false, 0) => "info",
            (false, 1) => "debug",
            _ => "trace",
        };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer);
        let _ = if self.log_format == "json" {
            builder.json().try_init()
        } else {
            builder.with_target(false).try_init()
        };
    }
}

/// Parses "a,b,c" (e.g. a spacing in mm) into three positive finite numbers.
pub fn parse_triple(s: &str) -> Result<[f64; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [a, b, c] = parts.as_slice() else {
        return Err(format!("expected three comma-separated numbers, got {s:?}"));
    };
    let mut out = [0.0; 3];
    for (o, p) in out.iter_mut().zip([a, b, c]) {
        *o = p.parse::<f64>().map_err(|e| format!("{p:?}: {e}"))?;
        if !o.is_finite() || *o <= 0.0 {
            return Err(format!("{p:?} must be a positive number"));
        }
    }
    Ok(out)
}

// Option values are checked while the command line is parsed, so a bad
// value is a usage error (exit 2, with clap's pointer to the option) before
// any file is read; the library still validates what it is given.

/// Parses a number and refuses NaN and infinities (Rust's `f64` parser
/// accepts "NaN" and "inf", and a NaN compares false against every bound).
fn parse_finite(s: &str) -> Result<f64, String> {
    let x: f64 = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !x.is_finite() {
        return Err(format!("{s:?} is not a finite number"));
    }
    Ok(x)
}

/// `--overlap`: a fraction in [0, 0.95), the range
/// [`InferenceConfig`] accepts.
pub fn parse_overlap(s: &str) -> Result<f64, String> {
    let x = parse_finite(s)?;
    if !(0.0..0.95).contains(&x) {
        return Err(format!("{x} is outside [0, 0.95)"));
    }
    Ok(x)
}

/// `--threshold`: a probability strictly between 0 and 1 (0 or 1 would make
/// every voxel, or none, a lesion).
pub fn parse_threshold(s: &str) -> Result<f32, String> {
    let x = parse_finite(s)?;
    if !(x > 0.0 && x < 1.0) {
        return Err(format!("{x} is outside (0, 1)"));
    }
    Ok(x as f32)
}

/// `--window-batch`: windows per forward pass, 1 to 1024.
pub fn parse_window_batch(s: &str) -> Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
    if !(1..=1024).contains(&n) {
        return Err(format!("{n} is outside 1..=1024"));
    }
    Ok(n)
}

/// A distance in mm that is finite and non-negative (`--tolerance-mm`).
pub fn parse_non_negative_mm(s: &str) -> Result<f64, String> {
    let x = parse_finite(s)?;
    if x < 0.0 {
        return Err(format!("{x} mm is negative"));
    }
    Ok(x)
}

/// A quality bar (`--min-accuracy`, `--min-dice`): any finite number. A
/// NaN bar would silently pass every run, since nothing compares below NaN;
/// a bar above 1 can never be met, which is how scripts test the exit code.
pub fn parse_quality_bar(s: &str) -> Result<f64, String> {
    parse_finite(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triples_parse_and_reject_nonsense() {
        assert_eq!(parse_triple("0.8, 0.8,1.5").unwrap(), [0.8, 0.8, 1.5]);
        assert!(parse_triple("1,2").is_err());
        assert!(parse_triple("1,0,2").is_err());
        assert!(parse_triple("1,x,2").is_err());
    }

    #[test]
    fn option_values_outside_their_range_are_refused() {
        assert_eq!(parse_overlap("0.5"), Ok(0.5));
        assert_eq!(parse_overlap("0"), Ok(0.0));
        for bad in ["1.0", "0.95", "-0.1", "NaN", "inf", "x"] {
            assert!(parse_overlap(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_threshold("0.3"), Ok(0.3));
        for bad in ["0", "1", "2", "NaN", "-inf"] {
            assert!(parse_threshold(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_window_batch("8"), Ok(8));
        for bad in ["0", "1025", "-1", "2.5"] {
            assert!(parse_window_batch(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_non_negative_mm("0"), Ok(0.0));
        for bad in ["NaN", "inf", "-1"] {
            assert!(parse_non_negative_mm(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_quality_bar("1.01"), Ok(1.01));
        for bad in ["NaN", "inf", "x"] {
            assert!(parse_quality_bar(bad).is_err(), "{bad}");
        }
    }
}
