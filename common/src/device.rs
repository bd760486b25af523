//! Chooses the libtorch device: CUDA where it can be reached, else the CPU.
//!
//! The binaries are linked against a CPU libtorch, so the linker never
//! records `libtorch_cuda.so`. Loading it with `dlopen(RTLD_NOW |
//! RTLD_GLOBAL)` before the first tch call registers the CUDA backend, after
//! which `tch::Cuda::is_available()` answers truthfully. Where the library
//! or a GPU is missing the same binary runs on the CPU.

use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// What the caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRequest {
    /// CUDA when available, else CPU.
    #[default]
    Auto,
    /// CPU only (CUDA is not even probed).
    Cpu,
    /// CUDA or an error.
    Cuda,
}

impl std::str::FromStr for DeviceRequest {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceRequest::Auto),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" | "gpu" => Ok(DeviceRequest::Cuda),
            other => Err(crate::Error::InvalidArgument(format!(
                "device {other:?}: expected auto, cpu or cuda"
            ))),
        }
    }
}

/// The outcome of device selection, for logs and `--check` output.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceInfo {
    /// "cpu" or "cuda:0".
    pub device: String,
    /// Whether `libtorch_cuda.so` was loaded.
    pub cuda_library_loaded: bool,
    /// Number of CUDA devices libtorch sees.
    pub cuda_devices: usize,
    /// Whether cuDNN is usable.
    pub cudnn: bool,
    /// Why CUDA is not used, when it is not.
    pub note: Option<String>,
}

fn load_cuda_library() -> &'static Result<(), String> {
    static LOADED: OnceLock<Result<(), String>> = OnceLock::new();
    LOADED.get_or_init(|| {
        let name = CString::new("libtorch_cuda.so").expect("no interior NUL");
        // SAFETY: dlopen with a valid C string; the handle is deliberately
        // never closed so the CUDA backend stays registered.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // SAFETY: dlerror returns a thread-local C string or null.
            let msg = unsafe { libc::dlerror() };
            let msg = if msg.is_null() {
                "unknown dlopen error".to_string()
            } else {
                unsafe { CStr::from_ptr(msg) }
                    .to_string_lossy()
                    .into_owned()
            };
            Err(msg)
        } else {
            Ok(())
        }
    })
}

/// Picks the device as asked, logs which and why, and turns on cuDNN
/// autotuning on CUDA (window shapes are fixed, so it pays off). Call once
/// at start-up, before other tch calls.
pub fn open(request: DeviceRequest) -> crate::Result<tch::Device> {
    let (dev, info) = select(request)?;
    match &info.note {
        Some(note) => tracing::info!(device = %info.device, "{note}"),
        None => tracing::info!(device = %info.device, cudnn = info.cudnn, "using CUDA"),
    }
    if dev != tch::Device::Cpu {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    Ok(dev)
}

/// Picks the device; call once at start-up, before other tch calls.
pub fn select(request: DeviceRequest) -> crate::Result<(tch::Device, DeviceInfo)> {
    if request == DeviceRequest::Cpu {
        let info = DeviceInfo {
            device: "cpu".into(),
            cuda_library_loaded: false,
            cuda_devices: 0,
            cudnn: false,
            note: Some("CPU requested".into()),
        };
        return Ok((tch::Device::Cpu, info));
    }
    let loaded = load_cuda_library();
    let count = if loaded.is_ok() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    };
    let note = match (loaded, count) {
        (Err(e), _) => Some(format!("libtorch_cuda.so not loaded: {e}")),
        (Ok(()), 0) => Some("libtorch_cuda.so loaded but no CUDA device is visible".into()),
        _ => None,
    };
    let info = DeviceInfo {
        device: if count > 0 {
            "cuda:0".into()
        } else {
            "cpu".into()
        },
        cuda_library_loaded: loaded.is_ok(),
        cuda_devices: count,
        cudnn: count > 0 && tch::Cuda::cudnn_is_available(),
        note,
    };
    match (request, count) {
        (_, c) if c > 0 => Ok((tch::Device::Cuda(0), info)),
        (DeviceRequest::Cuda, _) => Err(crate::Error::Unsupported(format!(
            "CUDA was requested but is not usable ({})",
            info.note.as_deref().unwrap_or("no device")
        ))),
        _ => Ok((tch::Device::Cpu, info)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_request_never_probes_cuda() {
        let (d, info) = select(DeviceRequest::Cpu).unwrap();
        assert_eq!(d, tch::Device::Cpu);
        assert_eq!(info.device, "cpu");
    }

    #[test]
    fn auto_falls_back_to_a_working_device() {
        let (d, info) = select(DeviceRequest::Auto).unwrap();
        // Whatever was chosen must run a tensor op.
        let t = tch::Tensor::ones([2, 2], (tch::Kind::Float, d)).sum(tch::Kind::Float);
        assert_eq!(t.double_value(&[]), 4.0);
        assert_eq!(info.device == "cpu", d == tch::Device::Cpu);
        if d == tch::Device::Cpu {
            assert!(info.note.is_some(), "the reason for CPU must be reported");
        }
        assert!("gpu".parse::<DeviceRequest>().unwrap() == DeviceRequest::Cuda);
        assert!("tpu".parse::<DeviceRequest>().is_err());
    }
}
