//! The compute device a command runs on: `--device cpu|wgpu|cuda`, opened once per process.
//!
//! `cpu` is Burn's flex backend with fmnist's own kernels ([`crate::ops`]); `wgpu` (Vulkan,
//! Metal, DirectX or a software rasteriser such as Mesa's llvmpipe) and `cuda` use Burn's own
//! operations and are compiled in only with `--features wgpu` / `--features cuda`.

use std::sync::OnceLock;

use burn::prelude::Device;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A backend `--device` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Burn's flex backend on the CPU, with fmnist's AVX-512 and AMX kernels.
    Cpu,
    /// Burn's wgpu backend (built with `--features wgpu`).
    Wgpu,
    /// Burn's CUDA backend (built with `--features cuda`).
    Cuda,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }

    /// Whether this binary was built with the backend.
    pub fn compiled(self) -> bool {
        match self {
            Backend::Cpu => true,
            Backend::Wgpu => cfg!(feature = "wgpu"),
            Backend::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The default: the first of CUDA and wgpu that this binary was built with and whose
    /// adapter is a graphics card, else the CPU (flex trains far faster than a software
    /// rasteriser such as llvmpipe). Opens the GPU backends' devices to find out.
    /// The device found is kept as this process's, so it is not opened again.
    pub fn best_available() -> Backend {
        for backend in [Backend::Cuda, Backend::Wgpu] {
            if let Some(compute) = backend.compiled().then(|| open(backend).ok()).flatten()
                && compute.card
            {
                let _ = OPENED.set(Ok(compute));
                return backend;
            }
        }
        Backend::Cpu
    }
}

/// An opened device and what it is called in the output ("wgpu (llvmpipe ...)").
#[derive(Debug, Clone)]
pub struct Compute {
    pub backend: Backend,
    pub device: Device,
    /// The backend and, for a GPU backend, the adapter's own name.
    pub label: String,
    /// Whether the adapter is a graphics card (not the CPU, nor a software rasteriser such as
    /// Mesa's llvmpipe).
    pub card: bool,
}

/// Opens `backend`, checking that it was compiled in and that it has an adapter.
pub fn open(backend: Backend) -> Result<Compute> {
    if !backend.compiled() {
        return Err(Error::Usage(format!(
            "--device {0}: this fmnist was built without the {0} backend; rebuild with \
             `cargo build --release --features {0}`, or use --device cpu",
            backend.name()
        )));
    }
    let device = match backend {
        Backend::Cpu => Device::flex(),
        #[cfg(feature = "wgpu")]
        Backend::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        #[cfg(feature = "cuda")]
        Backend::Cuda => Device::cuda(0),
        #[allow(unreachable_patterns)]
        _ => unreachable!("checked by Backend::compiled"),
    };
    let (label, card) = match backend {
        Backend::Cpu => (cpu_label(), false),
        _ => {
            let (name, card) = adapter(backend, &device)?;
            (format!("{} ({name})", backend.name()), card)
        }
    };
    Ok(Compute {
        backend,
        device,
        label,
        card,
    })
}

/// "cpu (flex, N threads)".
fn cpu_label() -> String {
    match rayon::current_num_threads() {
        1 => "cpu (flex, 1 thread)".into(),
        n => format!("cpu (flex, {n} threads)"),
    }
}

/// The adapter behind a GPU backend's device, opening it: its name and whether it is a card.
/// Burn panics when there is none; that becomes an error naming the fix.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn adapter(backend: Backend, device: &Device) -> Result<(String, bool)> {
    let identity = quietly(|| device.identity());
    let fix = match backend {
        Backend::Cuda => "install the NVIDIA driver, or use --device cpu",
        _ => {
            "install a Vulkan driver (Debian: mesa-vulkan-drivers for a software one), or use --device cpu"
        }
    };
    match identity {
        Ok(Some(identity)) => Ok((identity.name, identity.physical.is_some())),
        Ok(None) => Ok(("unnamed adapter".into(), false)),
        Err(_) => Err(Error::Usage(format!(
            "--device {}: no adapter could be opened; {fix}",
            backend.name()
        ))),
    }
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
fn adapter(_backend: Backend, _device: &Device) -> Result<(String, bool)> {
    Ok((String::new(), false))
}

static CHOICE: OnceLock<Backend> = OnceLock::new();
static OPENED: OnceLock<std::result::Result<Compute, String>> = OnceLock::new();

/// Makes `backend` this process's device, checking that it was compiled in; it is opened on
/// first use, by [`current`]. Without one, the device is [`Backend::best_available`], found on
/// first use.
pub fn choose(backend: Option<Backend>) -> Result<()> {
    let Some(backend) = backend else {
        return Ok(());
    };
    if !backend.compiled() {
        return open(backend).map(|_| ());
    }
    let _ = CHOICE.set(backend);
    Ok(())
}

/// This process's device, opened the first time: the one [`choose`]n, else the best available.
pub fn current() -> Result<&'static Compute> {
    let opened = OPENED.get_or_init(|| open(chosen()).map_err(|e| e.to_string()));
    opened.as_ref().map_err(|e| Error::Usage(e.clone()))
}

/// The backend this process runs on (or will, once opened).
pub fn chosen() -> Backend {
    *CHOICE.get_or_init(Backend::best_available)
}

/// Runs `f`; on a GPU backend a panic inside it (how Burn reports a device failure, such as a
/// buffer the driver would not allocate) becomes [`Error::Device`] with the panic's message in
/// one line, instead of a backtrace. On the CPU a panic is a bug and stays one.
pub fn guard<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    let backend = chosen();
    if backend == Backend::Cpu {
        return f();
    }
    quietly(f).unwrap_or_else(|reason| {
        Err(Error::Device {
            device: backend.name().into(),
            reason,
        })
    })
}

/// Runs `f`, turning a panic into its message in one line, printed by nobody.
fn quietly<R>(f: impl FnOnce() -> R) -> std::result::Result<R, String> {
    static MESSAGE: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| info.payload().downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        let mut message = MESSAGE.lock().unwrap_or_else(|e| e.into_inner());
        if message.is_empty() {
            *message = one_line(&text);
        }
    }));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    outcome.map_err(|_| std::mem::take(&mut *MESSAGE.lock().unwrap_or_else(|e| e.into_inner())))
}

/// A backend's multi-line failure report as one line: the causes, without the list of the
/// operations it skipped and the empty backtrace sections.
fn one_line(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for line in text.lines().map(str::trim) {
        let noise = line.is_empty()
            || line.starts_with("skipped ")
            || line.starts_with("Caused by")
            || line.starts_with("No backtrace")
            || line.starts_with("Asked at");
        if !noise && !parts.contains(&line) {
            parts.push(line);
        }
    }
    parts.join("; ").trim_end_matches(')').to_string()
}
