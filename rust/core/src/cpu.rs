//! Which instruction set the runtime uses, detected at run time and chosen once.
//!
//! The runtime picks the fastest available level once, at load (AVX-512 VNNI, then AVX2, then
//! the portable fallback), or takes the caller's choice, and passes it as an [`Isa`] to every
//! kernel: the int8 GEMM and every f32 kernel (activation quantizer, f32 linear, LayerNorm, GELU,
//! attention). No kernel probes the CPU itself, so a run with `portable` runs portable code
//! everywhere. `tinyfast info` and `tinyfast-rt info` print the same report.
//!
//! What each level requires is defined once, in [`KernelKind::required_features`]; a level
//! includes the features of the levels below it, so a kernel at a level may use any code of the
//! lower levels.

use std::fmt;
use std::sync::OnceLock;

/// An instruction-set level (named after its int8 GEMM kernel), fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelKind {
    /// `vpdpbusd` on 512-bit vectors (u8 x s8 -> s32 without saturation); the f32 kernels use
    /// 512-bit AVX-512F code where they have it and the AVX2 code elsewhere.
    Avx512Vnni,
    /// 256-bit vectors with fused multiply-adds; the int8 GEMM widens to i16 and uses `vpmaddwd`.
    Avx2,
    /// Plain Rust built for the baseline target, without fused multiply-adds.
    Portable,
}

impl KernelKind {
    /// Every level, fastest first.
    pub const ALL: [KernelKind; 3] = [
        KernelKind::Avx512Vnni,
        KernelKind::Avx2,
        KernelKind::Portable,
    ];

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
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The CPU features (as `is_x86_feature_detected!` names them) this level's kernels are
    /// compiled for. AVX2 requires FMA because the AVX2 f32 kernels use fused multiply-adds;
    /// AVX-512 VNNI requires AVX2 and FMA too because its f32 kernels reuse AVX2 code (key
    /// packing, LayerNorm, the f32 linear).
    pub fn required_features(self) -> &'static [&'static str] {
        match self {
            KernelKind::Avx512Vnni => &["avx2", "fma", "avx512f", "avx512bw", "avx512vnni"],
            KernelKind::Avx2 => &["avx2", "fma"],
            KernelKind::Portable => &[],
        }
    }

    /// Whether this CPU (and build target) runs this level.
    pub fn is_available(self) -> bool {
        detected().kernels.contains(&self)
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A [`KernelKind`] this CPU is known to run. The only ways to make one check the CPU, so a kernel
/// handed an `Isa` may call code compiled for its level's features without checking again: the
/// value is chosen once (at load) and passed down, and kernels dispatch on it once per call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Isa(KernelKind);

impl Isa {
    /// Portable code, available everywhere.
    pub const PORTABLE: Isa = Isa(KernelKind::Portable);

    /// `kind`, if this CPU runs it.
    pub fn new(kind: KernelKind) -> Option<Isa> {
        kind.is_available().then_some(Isa(kind))
    }

    /// The fastest level this CPU runs.
    pub fn best() -> Isa {
        Isa(detected().best())
    }

    /// Every level this CPU runs, fastest first (ends with [`Isa::PORTABLE`]).
    pub fn available() -> Vec<Isa> {
        detected().kernels.iter().map(|&k| Isa(k)).collect()
    }

    /// The level.
    pub fn kind(self) -> KernelKind {
        self.0
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What the running CPU offers, as far as the int8 runtime cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuCapabilities {
    /// `std::env::consts::ARCH` of this build.
    pub arch: &'static str,
    /// Individual instruction-set features that were probed, with whether they are present.
    pub features: Vec<(&'static str, bool)>,
    /// Levels this CPU can run, fastest first; always ends with [`KernelKind::Portable`].
    pub kernels: Vec<KernelKind>,
}

impl CpuCapabilities {
    /// What the CPU this process runs on offers (probed once per process).
    pub fn detect() -> Self {
        detected().clone()
    }

    /// The level the runtime uses by default: the fastest this CPU supports.
    pub fn best(&self) -> KernelKind {
        self.kernels[0]
    }

    fn probe() -> Self {
        let features = probe_features();
        let has = |name: &str| features.iter().any(|&(n, on)| n == name && on);
        let kernels = KernelKind::ALL
            .into_iter()
            .filter(|k| cfg!(target_arch = "x86_64") || *k == KernelKind::Portable)
            .filter(|k| k.required_features().iter().all(|f| has(f)))
            .collect();
        CpuCapabilities {
            arch: std::env::consts::ARCH,
            features,
            kernels,
        }
    }
}

/// The probe's result, shared by every caller.
fn detected() -> &'static CpuCapabilities {
    static CAPS: OnceLock<CpuCapabilities> = OnceLock::new();
    CAPS.get_or_init(CpuCapabilities::probe)
}

#[cfg(target_arch = "x86_64")]
fn probe_features() -> Vec<(&'static str, bool)> {
    use std::arch::is_x86_feature_detected as has;
    vec![
        ("avx2", has!("avx2")),
        ("fma", has!("fma")),
        ("avx512f", has!("avx512f")),
        ("avx512bw", has!("avx512bw")),
        ("avx512vnni", has!("avx512vnni")),
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
        assert_eq!(Isa::available().last(), Some(&Isa::PORTABLE));
        assert_eq!(Isa::best().kind(), caps.best());
    }

    #[test]
    fn levels_follow_features() {
        let caps = CpuCapabilities::detect();
        let has = |n: &str| caps.features.iter().any(|&(f, on)| f == n && on);
        assert_eq!(
            caps.kernels.contains(&KernelKind::Avx512Vnni),
            has("avx2") && has("fma") && has("avx512f") && has("avx512bw") && has("avx512vnni")
        );
        assert_eq!(
            caps.kernels.contains(&KernelKind::Avx2),
            has("avx2") && has("fma")
        );
        for k in KernelKind::ALL {
            assert_eq!(Isa::new(k).is_some(), caps.kernels.contains(&k), "{k}");
            assert_eq!(k.is_available(), caps.kernels.contains(&k), "{k}");
        }
    }

    /// A level's features include those of every level below it.
    #[test]
    fn levels_are_nested() {
        for pair in KernelKind::ALL.windows(2) {
            let (upper, lower) = (pair[0], pair[1]);
            for f in lower.required_features() {
                assert!(upper.required_features().contains(f), "{upper} lacks {f}");
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for k in KernelKind::ALL {
            assert_eq!(KernelKind::from_name(k.name()), Some(k));
        }
        assert_eq!(KernelKind::from_name("sse9"), None);
    }
}
