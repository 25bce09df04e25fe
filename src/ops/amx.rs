//! Matrix products in bfloat16, accumulated in `f32`: the kernel behind the `medium` matmul
//! precision (PyTorch's `torch.set_float32_matmul_precision("medium")`). On Intel AMX tiles
//! (about 3 TFLOP/s per core against the 0.2 TFLOP/s of `f32` AVX-512 on the project's Xeon), or,
//! on CPUs with AVX512-BF16 but no tiles (AMD Zen 4 and Zen 5), with `vdpbf16ps` ([`dot`]).
//!
//! Operands are laid out as the tiles read them: `a` is row-major bf16, `b` is "pair-interleaved"
//! (element `(k, j)` in half `k % 2` of `b[(k / 2) * ldb + j]`, the VNNI layout), and the caller pads
//! `m` and `n` to multiples of 16 and `k` to a multiple of 32 with zeros.
//!
//! `FMNIST_BF16_KERNEL=tiles|avx512bf16|none` overrides the choice (for comparing the two on a CPU
//! that has both); a kernel the CPU lacks is never used.

#[cfg(target_arch = "x86_64")]
mod dot;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, Ordering};

/// The matrix precision of the fast kernels, as PyTorch names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatmulPrecision {
    /// Every product in `f32` (the default).
    #[default]
    Highest,
    /// Convolutions multiply bfloat16 operands (8-bit mantissa) into `f32` sums where that is
    /// faster (AMX tiles; AVX512-BF16 on AMD, see [`kernel`]), as mixed-precision training does on
    /// GPUs; `f32` elsewhere, and for a network's first convolution (one input channel).
    Medium,
}

static MEDIUM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Sets the process-wide matmul precision (as `torch.set_float32_matmul_precision`).
pub fn set_matmul_precision(precision: MatmulPrecision) {
    MEDIUM.store(precision == MatmulPrecision::Medium, Ordering::Relaxed);
}

/// Whether convolutions should multiply in bfloat16 now: `medium` precision on a CPU with a
/// bfloat16 kernel.
pub fn use_bf16() -> bool {
    MEDIUM.load(Ordering::Relaxed) && available()
}

/// The two bfloat16 kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Kernel {
    /// AMX tiles (`tdpbf16ps`): Intel Sapphire Rapids and later.
    Tiles,
    /// AVX512-BF16 dot products (`vdpbf16ps`): AMD Zen 4 and later, Intel Cooper Lake and later.
    DotProduct,
}

impl Bf16Kernel {
    /// How the training line names it.
    pub fn describe(self) -> &'static str {
        match self {
            Bf16Kernel::Tiles => "AMX tiles",
            Bf16Kernel::DotProduct => "AVX512-BF16 (vdpbf16ps)",
        }
    }
}

/// Whether this CPU has a bfloat16 kernel (see [`kernel`]).
pub fn available() -> bool {
    kernel().is_some()
}

/// The bfloat16 kernel products use: the tiles where the CPU has them, else AVX512-BF16 where it
/// beats `f32` ([`dot_pays`]: AMD), unless
/// `FMNIST_BF16_KERNEL` or [`with_kernel`] says otherwise.
pub fn kernel() -> Option<Bf16Kernel> {
    match FORCED.load(Ordering::Relaxed) {
        FORCED_TILES => return tiles_available().then_some(Bf16Kernel::Tiles),
        FORCED_DOT => return dot_available().then_some(Bf16Kernel::DotProduct),
        _ => {}
    }
    static CHOSEN: OnceLock<Option<Bf16Kernel>> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let (tiles, dot) = (
            tiles_available().then_some(Bf16Kernel::Tiles),
            dot_available().then_some(Bf16Kernel::DotProduct),
        );
        match std::env::var("FMNIST_BF16_KERNEL").as_deref() {
            Ok("tiles") => tiles,
            Ok("avx512bf16") => dot,
            Ok("none") => None,
            _ => tiles.or(dot.filter(|_| dot_pays())),
        }
    })
}

/// Why `medium` multiplies in `f32` here (when [`kernel`] gives none).
pub fn f32_reason() -> &'static str {
    if std::env::var("FMNIST_BF16_KERNEL").as_deref() == Ok("none") {
        "FMNIST_BF16_KERNEL=none"
    } else if dot_available() && !dot_pays() {
        "AVX512-BF16 is slower than f32 on Intel cores (FMNIST_BF16_KERNEL=avx512bf16 forces it)"
    } else {
        "this CPU has neither AMX tiles nor AVX512-BF16 for bfloat16"
    }
}

/// Whether `vdpbf16ps` beats `f32` here, so that `medium` uses it where there are no tiles: on
/// AMD Zen 4 and 5 each instruction does twice an `f32` FMA's multiply-adds at the same rate
/// (speedrun steps 1.3-1.7x faster); on Intel cores it issues at half the FMA's rate, and the
/// speedrun step took 4-24% longer than in `f32` (docs/performance.md).
fn dot_pays() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let vendor = std::arch::x86_64::__cpuid(0);
        let word = |s: &[u8; 4]| u32::from_le_bytes(*s);
        vendor.ebx == word(b"Auth") && vendor.edx == word(b"enti") && vendor.ecx == word(b"cAMD")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

const FORCED_TILES: u8 = 1;
const FORCED_DOT: u8 = 2;
static FORCED: AtomicU8 = AtomicU8::new(0);

/// Runs `f` with products on `kernel` (where the CPU has it; else in `f32`), one caller at a
/// time: for tests that compare the kernels within one process.
pub fn with_kernel<R>(kernel: Bf16Kernel, f: impl FnOnce() -> R) -> R {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let code = match kernel {
        Bf16Kernel::Tiles => FORCED_TILES,
        Bf16Kernel::DotProduct => FORCED_DOT,
    };
    FORCED.store(code, Ordering::Relaxed);
    let result = f();
    FORCED.store(0, Ordering::Relaxed);
    result
}

/// Whether the CPU has AVX-512 F, BW and VL (which the layout loops are compiled for).
pub(crate) fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU has AVX512-BF16 (`vdpbf16ps`).
fn dot_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return avx512_available() && is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the CPU has AMX-BF16 tiles and Linux lets this process use them (asked once).
pub fn tiles_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(detect)
}

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn detect() -> bool {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE. The layout loops around the tiles are
    // compiled for AVX-512 ([`vectorised`]), which every CPU with AMX has; checked all the same.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    if leaf.edx & (1 << 22) == 0 || leaf.edx & (1 << 24) == 0 {
        return false;
    }
    if !avx512_available() {
        return false;
    }
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call asking for the tile state; it fails cleanly where refused.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

#[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
fn detect() -> bool {
    false
}

/// Runs `f` compiled for AVX-512 (16 `f32` lanes instead of the baseline's 4) where the CPU has
/// it, as compiled otherwise: the bfloat16 path's conversions and copies, which the compiler
/// vectorises from plain loops. Only code inlined into the AVX-512 copy gets its instructions;
/// call it through [`vectorised!`], which marks the closure `#[inline(always)]`.
#[inline(always)]
pub fn with_avx512<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if avx512_available() {
        // SAFETY: `avx512_available` checked that the CPU has AVX-512 F/BW/VL.
        return unsafe { avx512(f) };
    }
    f()
}

/// `vectorised!{ statements }`: the block run by [`with_avx512`] as a closure marked
/// `#[inline(always)]`. Left to itself the compiler kept large closures out of line, compiled
/// for the baseline's SSE (`objdump -d` showed no `zmm` register in five of eight of them).
macro_rules! vectorised {
    ($($body:tt)*) => {
        $crate::ops::amx::with_avx512(
            #[inline(always)]
            || { $($body)* },
        )
    };
}
pub(crate) use vectorised;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `x` rounded to the nearest bfloat16 (ties to even), as bits; NaN stays NaN. Branch-free, so
/// that loops over it vectorise.
#[inline(always)]
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    // Wrapping: only NaNs come near the top, and they take the other branch.
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { (bits >> 16) | 0x40 } else { rounded }) as u16
}

/// Two values as one pair-interleaved element: `first` in the low half.
#[inline(always)]
fn pair(first: f32, second: f32) -> u32 {
    to_bf16(first) as u32 | ((to_bf16(second) as u32) << 16)
}

/// A zeroed buffer whose first element sits on a 64-byte boundary: tile rows that straddle two
/// cache lines load at half speed or less (measured: 0.5 against 1.5 TFLOP/s on one core).
pub struct Aligned<T> {
    buf: Vec<T>,
    start: usize,
    len: usize,
}

impl<T: Copy + Default> Aligned<T> {
    pub fn zeroed(len: usize) -> Self {
        let slack = 64 / std::mem::size_of::<T>();
        let buf = vec![T::default(); len + slack];
        let start = buf.as_ptr().align_offset(64);
        assert!(start < slack, "no 64-byte boundary within the slack");
        Aligned { buf, start, len }
    }
}

impl<T> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<T> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// `n` rounded up to a multiple of `to`.
pub fn pad(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Writes rows `2p` and `2p + 1` of the row-major `src` (`rows × cols`, row stride `src_stride`)
/// as row `p` of the pair-interleaved `dst` (row stride `ldb` pairs); a missing last row counts
/// as zeros.
pub fn interleave_rows(
    src: &[f32],
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: &mut [u32],
    ldb: usize,
) {
    vectorised! {
        for p in 0..rows.div_ceil(2) {
            let even = &src[2 * p * src_stride..][..cols];
            let out = &mut dst[p * ldb..][..cols];
            if 2 * p + 1 < rows {
                let odd = &src[(2 * p + 1) * src_stride..][..cols];
                for ((o, &e), &d) in out.iter_mut().zip(even).zip(odd) {
                    *o = pair(e, d);
                }
            } else {
                for (o, &e) in out.iter_mut().zip(even) {
                    *o = pair(e, 0.0);
                }
            }
        }
    }
}

/// The bfloat16 halves of pair-interleaved elements, `2 * i + k % 2` for element `i`'s half.
pub fn halves(pairs: &mut [u32]) -> &mut [u16] {
    // SAFETY: u16 has a smaller alignment than u32 and every bit pattern is valid for both; on a
    // little-endian CPU the first half is the low one, as the tiles read it.
    unsafe { std::slice::from_raw_parts_mut(pairs.as_mut_ptr().cast::<u16>(), pairs.len() * 2) }
}

/// Writes the transpose of `src` (`rows × cols`, row stride `src_stride`) pair-interleaved into
/// `dst`: element `(k, j)` of the transpose is `src[j][k]`, so pairs run along `src`'s rows.
pub fn interleave_transposed(
    src: &[f32],
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: &mut [u32],
    ldb: usize,
) {
    vectorised! {
        // Blocks of 16 source rows × 16 pairs: each row's pairs converted along the row (which
        // vectorises), then the block written out transposed, whole cache lines at a time.
        let pairs = cols.div_ceil(2);
        let mut block = [[0u32; 16]; 16];
        for j0 in (0..rows).step_by(16) {
            let rows_here = 16.min(rows - j0);
            for p0 in (0..pairs).step_by(16) {
                let pairs_here = 16.min(pairs - p0);
                // Pairs with both columns inside `src`; an odd last column pairs with zero.
                let whole = (cols / 2).saturating_sub(p0).min(pairs_here);
                for (jj, converted) in block.iter_mut().take(rows_here).enumerate() {
                    let row = &src[(j0 + jj) * src_stride..][..cols];
                    for (o, two) in converted[..whole]
                        .iter_mut()
                        .zip(row[2 * p0..].chunks_exact(2))
                    {
                        *o = pair(two[0], two[1]);
                    }
                    if whole < pairs_here {
                        converted[whole] = pair(row[cols - 1], 0.0);
                    }
                }
                for pp in 0..pairs_here {
                    let out = &mut dst[(p0 + pp) * ldb + j0..][..rows_here];
                    for (o, converted) in out.iter_mut().zip(&block) {
                        *o = converted[pp];
                    }
                }
            }
        }
    }
}

/// Converts the row-major `src` (`rows × cols`, stride `src_stride`) into bf16 rows of `dst`
/// (stride `dst_stride`); the padding of `dst` is left as it is.
pub fn convert_rows(
    src: &[f32],
    rows: usize,
    cols: usize,
    src_stride: usize,
    dst: &mut [u16],
    dst_stride: usize,
) {
    vectorised! {
        for r in 0..rows {
            let s = &src[r * src_stride..][..cols];
            let d = &mut dst[r * dst_stride..][..cols];
            d.iter_mut().zip(s).for_each(|(d, s)| *d = to_bf16(*s));
        }
    }
}

/// The tile configuration: palette 1, eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut t = 0;
    while t < 8 {
        bytes[16 + 2 * t] = 64;
        bytes[48 + t] = 16;
        t += 1;
    }
    TileConfig(bytes)
};

/// `c[m×n] (+)= a[m×k] · b[k×n]` on the [`kernel`] (see the module comment for the layouts);
/// `lda`, `ldb` and `ldc` are row strides in elements. Requires [`available`].
///
/// # Panics
/// When a size is not padded or a slice is too short for the strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[u16],
    lda: usize,
    b: &[u32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let kernel = kernel().expect("no bfloat16 kernel on this CPU");
    assert!(
        m.is_multiple_of(16) && n.is_multiple_of(16) && k.is_multiple_of(32),
        "unpadded sizes"
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(lda >= k && ldb >= n && ldc >= n);
    assert!(a.len() >= (m - 1) * lda + k, "a too short");
    assert!(k == 0 || b.len() >= (k / 2 - 1) * ldb + n, "b too short");
    assert!(c.len() >= (m - 1) * ldc + n, "c too short");
    // SAFETY: the asserts above keep every tile row inside its slice: a tile reads 16 rows of
    // 64 bytes at the given strides starting at offsets within the padded sizes.
    let product = Product {
        k,
        a: a.as_ptr(),
        lda,
        b: b.as_ptr(),
        ldb,
        c: c.as_mut_ptr(),
        ldc,
        accumulate,
    };
    match kernel {
        Bf16Kernel::Tiles => unsafe { tiles::product(m, n, &product) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel` checked AVX-512 F and BF16.
        Bf16Kernel::DotProduct => unsafe { dot::product(m, n, &product) },
        #[cfg(not(target_arch = "x86_64"))]
        Bf16Kernel::DotProduct => unreachable!("AVX512-BF16 exists only on x86-64"),
    }
}

/// The operands of one product (see [`gemm`]); strides in elements.
struct Product {
    k: usize,
    a: *const u16,
    lda: usize,
    b: *const u32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    use super::Product;
    use std::arch::asm;

    /// Tiles 0-3 hold a 32×32 block of `c`, 4-5 two row blocks of `a`, 6-7 two column blocks of
    /// `b`; a lone 16×16 block uses tiles 0, 4 and 6.
    pub(super) unsafe fn product(m: usize, n: usize, p: &Product) {
        unsafe {
            // The configuration stays loaded on this thread between products: loading it again
            // (after `tilerelease`) costs more than a small product.
            thread_local!(static CONFIGURED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
            if !CONFIGURED.get() {
                asm!("ldtilecfg [{0}]", in(reg) super::CONFIG.0.as_ptr());
                CONFIGURED.set(true);
            }
            let mut i = 0;
            while i < m {
                let rows = if m - i >= 32 { 2 } else { 1 };
                let mut j = 0;
                while j < n {
                    if rows == 2 && n - j >= 32 {
                        p.block2x2(i, j);
                        j += 32;
                    } else {
                        for r in 0..rows {
                            p.block1x1(i + 16 * r, j);
                        }
                        j += 16;
                    }
                }
                i += 16 * rows;
            }
        }
    }

    impl Product {
        /// Row strides in bytes, as the tile instructions take them: `(a, b, c)`.
        #[inline(always)]
        fn strides(&self) -> (usize, usize, usize) {
            (self.lda * 2, self.ldb * 4, self.ldc * 4)
        }

        /// Where the block at row `i`, column `j` of `c` starts in each operand.
        #[inline(always)]
        unsafe fn corner(&self, i: usize, j: usize) -> (*const u16, *const u32, *mut f32) {
            // SAFETY: `gemm` checked that the padded sizes lie within the operands.
            unsafe {
                (
                    self.a.add(i * self.lda),
                    self.b.add(j),
                    self.c.add(i * self.ldc + j),
                )
            }
        }

        /// `c[i..i+32][j..j+32]` (+)= `a[i..i+32] · b[..][j..j+32]`.
        #[inline(always)]
        unsafe fn block2x2(&self, i: usize, j: usize) {
            let (sa, sb, sc) = self.strides();
            unsafe {
                let (a, b, c) = self.corner(i, j);
                let (c1, c2) = (c.add(16), c.byte_add(16 * sc));
                let c3 = c2.add(16);
                if self.accumulate {
                    asm!(
                        "tileloadd tmm0, [{c0} + {s}*1]",
                        "tileloadd tmm1, [{c1} + {s}*1]",
                        "tileloadd tmm2, [{c2} + {s}*1]",
                        "tileloadd tmm3, [{c3} + {s}*1]",
                        c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) sc,
                    );
                } else {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3"
                    );
                }
                let a1 = a.byte_add(16 * sa);
                for kk in (0..self.k).step_by(32) {
                    let bk = b.add(kk / 2 * self.ldb);
                    asm!(
                        "tileloadd tmm4, [{a0} + {sa}*1]",
                        "tileloadd tmm6, [{b0} + {sb}*1]",
                        "tileloadd tmm5, [{a1} + {sa}*1]",
                        "tileloadd tmm7, [{b1} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        "tdpbf16ps tmm1, tmm4, tmm7",
                        "tdpbf16ps tmm2, tmm5, tmm6",
                        "tdpbf16ps tmm3, tmm5, tmm7",
                        a0 = in(reg) a.add(kk), a1 = in(reg) a1.add(kk), sa = in(reg) sa,
                        b0 = in(reg) bk, b1 = in(reg) bk.add(16), sb = in(reg) sb,
                    );
                }
                asm!(
                    "tilestored [{c0} + {s}*1], tmm0",
                    "tilestored [{c1} + {s}*1], tmm1",
                    "tilestored [{c2} + {s}*1], tmm2",
                    "tilestored [{c3} + {s}*1], tmm3",
                    c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) sc,
                );
            }
        }

        /// `c[i..i+16][j..j+16]` (+)= `a[i..i+16] · b[..][j..j+16]`.
        #[inline(always)]
        unsafe fn block1x1(&self, i: usize, j: usize) {
            let (sa, sb, sc) = self.strides();
            unsafe {
                let (a, b, c) = self.corner(i, j);
                if self.accumulate {
                    asm!("tileloadd tmm0, [{c} + {s}*1]", c = in(reg) c, s = in(reg) sc);
                } else {
                    asm!("tilezero tmm0");
                }
                for kk in (0..self.k).step_by(32) {
                    asm!(
                        "tileloadd tmm4, [{a} + {sa}*1]",
                        "tileloadd tmm6, [{b} + {sb}*1]",
                        "tdpbf16ps tmm0, tmm4, tmm6",
                        a = in(reg) a.add(kk), sa = in(reg) sa, b = in(reg) b.add(kk / 2 * self.ldb), sb = in(reg) sb,
                    );
                }
                asm!("tilestored [{c} + {s}*1], tmm0", c = in(reg) c, s = in(reg) sc);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod tiles {
    pub(super) unsafe fn product(_: usize, _: usize, _: &super::Product) {
        unreachable!("AMX tiles exist only on x86-64")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn bf16_value(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }

    #[test]
    fn rounding_to_bfloat16_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 lies half-way between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 lies half-way between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(bf16_value(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(bf16_value(to_bf16(-2.5)), -2.5);
        assert!(bf16_value(to_bf16(f32::NAN)).is_nan());
        assert!(bf16_value(to_bf16(f32::from_bits(u32::MAX))).is_nan());
        assert_eq!(bf16_value(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    /// Products of bf16-exact values (small integers) are exact in `f32`, so the tiles must give
    /// the reference product to the last bit, for every block shape and with accumulation.
    /// The kernels this CPU has (the tests run each).
    pub fn kernels_here() -> Vec<Bf16Kernel> {
        let mut kernels = Vec::new();
        if tiles_available() {
            kernels.push(Bf16Kernel::Tiles);
        }
        if dot_available() {
            kernels.push(Bf16Kernel::DotProduct);
        }
        if kernels.is_empty() {
            eprintln!("no bfloat16 kernel on this CPU: skipped");
        }
        kernels
    }

    #[test]
    fn tile_and_dot_products_match_a_reference_exactly() {
        for kernel in kernels_here() {
            with_kernel(kernel, exact_products);
        }
    }

    fn exact_products() {
        let (m, n, k) = (48, 80, 96);
        let av: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 11) as f32) - 5.0).collect();
        let bv: Vec<f32> = (0..k * n).map(|i| ((i * 5 % 13) as f32) - 6.0).collect();
        let mut a = vec![0u16; m * k];
        convert_rows(&av, m, k, k, &mut a, k);
        let mut b = vec![0u32; k / 2 * n];
        interleave_rows(&bv, k, n, n, &mut b, n);
        let mut c: Vec<f32> = (0..m * n).map(|i| i as f32).collect();
        gemm(m, n, k, &a, k, &b, n, &mut c, n, true);
        for i in 0..m {
            for j in 0..n {
                let dot: f32 = (0..k).map(|p| av[i * k + p] * bv[p * n + j]).sum();
                assert_eq!(c[i * n + j], (i * n + j) as f32 + dot, "({i}, {j})");
            }
        }
        // The transposed layout of B gives the same product.
        let bt: Vec<f32> = (0..n * k).map(|t| bv[(t % k) * n + t / k]).collect();
        let mut b2 = vec![0u32; k / 2 * n];
        interleave_transposed(&bt, n, k, k, &mut b2, n);
        assert_eq!(b, b2);
        let mut c2 = vec![0f32; m * n];
        gemm(m, n, k, &a, k, &b2, n, &mut c2, n, false);
        for i in 0..m * n {
            assert_eq!(c2[i], c[i] - i as f32);
        }
    }

    /// The transposed layout equals the plain one of the explicit transpose, for general values,
    /// row counts that are not multiples of 16 and an odd column count (the last pair half zero).
    #[test]
    fn interleave_transposed_is_interleave_rows_of_the_transpose() {
        for (rows, cols) in [(37, 51), (16, 32), (5, 3), (70, 1)] {
            let stride = cols + 3;
            let src: Vec<f32> = (0..rows * stride)
                .map(|i| ((i * 7919 % 1013) as f32 - 506.0) * 0.0137)
                .collect();
            let transposed: Vec<f32> = (0..cols * rows)
                .map(|t| src[(t % rows) * stride + t / rows])
                .collect();
            let ldb = rows + 5;
            let mut want = vec![7u32; cols.div_ceil(2) * ldb];
            interleave_rows(&transposed, cols, rows, rows, &mut want, ldb);
            let mut got = vec![7u32; cols.div_ceil(2) * ldb];
            interleave_transposed(&src, rows, cols, stride, &mut got, ldb);
            assert_eq!(got, want, "{rows} x {cols}");
        }
    }
}
