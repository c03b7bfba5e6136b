//! Which int8 kernels this CPU can run, detected at run time.
//!
//! The runtime picks the fastest available path once (AVX-512 VNNI, then AVX2, then the portable
//! fallback); `tinyfast info` and `tinyfast-rt info` print the same report.

use std::fmt;

/// An int8 GEMM implementation, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelKind {
    /// `vpdpbusd` on 512-bit vectors (u8 x s8 -> s32 without saturation).
    Avx512Vnni,
    /// `vpmaddubsw` + `vpmaddwd` on 256-bit vectors (needs a saturation-safe weight range).
    Avx2,
    /// Plain scalar Rust: every SIMD path is tested bit-exact against it.
    Portable,
}

impl KernelKind {
    /// The stable name used in reports and in the `TINYFAST_KERNEL` override.
    pub fn name(self) -> &'static str {
        match self {
            KernelKind::Avx512Vnni => "avx512-vnni",
            KernelKind::Avx2 => "avx2",
            KernelKind::Portable => "portable",
        }
    }

    /// Parses a name printed by [`KernelKind::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        [
            KernelKind::Avx512Vnni,
            KernelKind::Avx2,
            KernelKind::Portable,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the running CPU offers, as far as the int8 runtime cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuCapabilities {
    /// `std::env::consts::ARCH` of this build.
    pub arch: &'static str,
    /// Individual instruction-set features that were probed, with whether they are present.
    pub features: Vec<(&'static str, bool)>,
    /// Kernels this CPU can run, fastest first; always ends with [`KernelKind::Portable`].
    pub kernels: Vec<KernelKind>,
}

impl CpuCapabilities {
    /// Probes the CPU this process runs on.
    pub fn detect() -> Self {
        let features = probe_features();
        let has = |name: &str| features.iter().any(|&(n, on)| n == name && on);
        let mut kernels = Vec::new();
        if has("avx512f") && has("avx512bw") && has("avx512vnni") {
            kernels.push(KernelKind::Avx512Vnni);
        }
        if has("avx2") && has("fma") {
            kernels.push(KernelKind::Avx2);
        }
        kernels.push(KernelKind::Portable);
        CpuCapabilities {
            arch: std::env::consts::ARCH,
            features,
            kernels,
        }
    }

    /// The kernel the runtime uses by default: the fastest this CPU supports.
    pub fn best(&self) -> KernelKind {
        self.kernels[0]
    }
}

#[cfg(target_arch = "x86_64")]
fn probe_features() -> Vec<(&'static str, bool)> {
    vec![
        ("avx2", std::arch::is_x86_feature_detected!("avx2")),
        ("fma", std::arch::is_x86_feature_detected!("fma")),
        ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
        ("avx512bw", std::arch::is_x86_feature_detected!("avx512bw")),
        (
            "avx512vnni",
            std::arch::is_x86_feature_detected!("avx512vnni"),
        ),
    ]
}

#[cfg(not(target_arch = "x86_64"))]
fn probe_features() -> Vec<(&'static str, bool)> {
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_is_always_last() {
        let caps = CpuCapabilities::detect();
        assert_eq!(caps.kernels.last(), Some(&KernelKind::Portable));
        assert_eq!(caps.best(), caps.kernels[0]);
    }

    #[test]
    fn kernels_follow_features() {
        let caps = CpuCapabilities::detect();
        let has = |n: &str| caps.features.iter().any(|&(f, on)| f == n && on);
        assert_eq!(
            caps.kernels.contains(&KernelKind::Avx512Vnni),
            has("avx512f") && has("avx512bw") && has("avx512vnni")
        );
        assert_eq!(
            caps.kernels.contains(&KernelKind::Avx2),
            has("avx2") && has("fma")
        );
    }

    #[test]
    fn names_round_trip() {
        for k in [
            KernelKind::Avx512Vnni,
            KernelKind::Avx2,
            KernelKind::Portable,
        ] {
            assert_eq!(KernelKind::from_name(k.name()), Some(k));
        }
        assert_eq!(KernelKind::from_name("sse9"), None);
    }
}
