//! Convolutions of a single input channel (the first layer of every CNN here) in `f32`, computed
//! directly in AVX-512 instead of through im2col and the `gemm` crate.
//!
//! With one input channel the patch matrix has only `k²` rows (9 for 3x3), so the product does
//! 9 multiply-adds per output value it stores, and copying the patches and packing them for
//! `gemm` cost as much again: W3's first convolution ran at a tenth of the cores' peak. Here each
//! 16-pixel run of an output row loads its `k²` shifted input runs once into registers and every
//! output channel multiplies them by its broadcast taps.
//!
//! The forward sums are the product's, bit for bit: each value starts from `+0.0`, adds its taps
//! in order with fused multiply-adds, then the bias. The weight gradient sums its pixels in
//! another order than `gemm` (sixteen partial sums per tap, added at the end of the image), so it
//! agrees with it to rounding, not to the bit.

use std::arch::x86_64::*;

use super::ConvShape;

/// The kernel sizes compiled here (taps held in registers need a size known at compile time).
pub(super) fn supports(s: &ConvShape) -> bool {
    s.in_channels == 1 && matches!(s.kernel, 3 | 5) && crate::ops::lanes::available()
}

/// The mask of the first `n` lanes (at most 16).
#[inline(always)]
pub(super) fn lanes_mask(n: usize) -> __mmask16 {
    if n >= 16 { 0xffff } else { (1u16 << n) - 1 }
}

/// One image's convolution: `out[o * stride + y * ow + x] = Σ_t w[o][t] · padded[y + ky][x + kx]
/// + bias[o]`, from the image's zero-padded plane (`padded`, rows `width + 2p` long).
///
/// # Safety
/// The CPU must have AVX-512 F ([`supports`]).
#[target_feature(enable = "avx512f")]
pub(super) fn forward_image(
    s: &ConvShape,
    padded: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    match s.kernel {
        3 => forward_k::<3, 9>(s, padded, weight, bias, out, stride),
        5 => forward_k::<5, 25>(s, padded, weight, bias, out, stride),
        k => unreachable!("direct convolution of a {k}x{k} kernel"),
    }
}

/// [`forward_image`] for a `K`x`K` kernel of `T = K²` taps.
#[inline]
#[target_feature(enable = "avx512f")]
fn forward_k<const K: usize, const T: usize>(
    s: &ConvShape,
    padded: &[f32],
    weight: &[f32],
    bias: &[f32],
    out: &mut [f32],
    stride: usize,
) {
    let (oh, ow, pw) = checked_sizes::<K>(s, padded, out.len(), stride);
    let o = s.out_channels;
    assert!(
        weight.len() >= o * T && bias.len() >= o,
        "direct: weights too short"
    );
    for y in 0..oh {
        for x0 in (0..ow).step_by(16) {
            let mask = lanes_mask(ow - x0);
            let taps = input_runs::<K, T>(padded, pw, y, x0, mask);
            for c in 0..o {
                let w = &weight[c * T..(c + 1) * T];
                let mut acc = _mm512_setzero_ps();
                for t in 0..T {
                    acc = _mm512_fmadd_ps(_mm512_set1_ps(w[t]), taps[t], acc);
                }
                acc = _mm512_add_ps(acc, _mm512_set1_ps(bias[c]));
                // SAFETY: the lanes in `mask` lie inside row `y` of plane `c` (`checked_sizes`).
                unsafe {
                    _mm512_mask_storeu_ps(out.as_mut_ptr().add(c * stride + y * ow + x0), mask, acc)
                };
            }
        }
    }
}

/// `(out_height, out_width, padded width)`, after checking that `padded` holds the plane a
/// `K`x`K` kernel reads and that `planes` values hold every output channel's plane, `stride`
/// apart (the kernels' loads and stores stay inside both).
fn checked_sizes<const K: usize>(
    s: &ConvShape,
    padded: &[f32],
    planes: usize,
    stride: usize,
) -> (usize, usize, usize) {
    let (oh, ow, pw) = (s.out_height(), s.out_width(), s.width + 2 * s.padding);
    assert!(
        padded.len() >= (oh + K - 1) * pw,
        "direct: padded plane too short"
    );
    let o = s.out_channels;
    assert!(
        o == 0 || planes >= (o - 1) * stride + oh * ow,
        "direct: output planes too short"
    );
    (oh, ow, pw)
}

/// The `T` input runs that output run `(y, x0..x0 + 16)` multiplies, tap `(ky, kx)` at
/// `ky * K + kx`; lanes outside `mask` are zero.
#[inline]
#[target_feature(enable = "avx512f")]
fn input_runs<const K: usize, const T: usize>(
    padded: &[f32],
    pw: usize,
    y: usize,
    x0: usize,
    mask: __mmask16,
) -> [__m512; T] {
    let mut taps = [_mm512_setzero_ps(); T];
    for ky in 0..K {
        for kx in 0..K {
            let at = (y + ky) * pw + x0 + kx;
            // SAFETY: the lanes in `mask` end before `kx + ow <= pw` in row `y + ky`, inside
            // `padded` (`checked_sizes`).
            taps[ky * K + kx] = unsafe { _mm512_maskz_loadu_ps(mask, padded.as_ptr().add(at)) };
        }
    }
    taps
}

/// Adds one image's weight gradient to `dw` (`[out_channels × k²]`): `dw[o][t] += Σ_{y,x}
/// dconv[o * stride + y * ow + x] · padded[y + ky][x + kx]`.
///
/// # Safety
/// The CPU must have AVX-512 F ([`supports`]).
#[target_feature(enable = "avx512f")]
pub(super) fn add_weight_gradient(
    s: &ConvShape,
    padded: &[f32],
    dconv: &[f32],
    stride: usize,
    dw: &mut [f32],
) {
    match s.kernel {
        3 => weight_gradient_k::<3, 9>(s, padded, dconv, stride, dw),
        5 => weight_gradient_k::<5, 25>(s, padded, dconv, stride, dw),
        k => unreachable!("direct convolution of a {k}x{k} kernel"),
    }
}

/// [`add_weight_gradient`] for a `K`x`K` kernel, two output channels at a time (`2T`
/// accumulators, the input runs loaded once for both).
#[inline]
#[target_feature(enable = "avx512f")]
fn weight_gradient_k<const K: usize, const T: usize>(
    s: &ConvShape,
    padded: &[f32],
    dconv: &[f32],
    stride: usize,
    dw: &mut [f32],
) {
    let (oh, ow, pw) = checked_sizes::<K>(s, padded, dconv.len(), stride);
    let o = s.out_channels;
    assert!(dw.len() >= o * T, "direct: weight gradient too short");
    let run = |c: usize, y: usize, x0: usize, mask: __mmask16| {
        // SAFETY: the lanes in `mask` lie inside row `y` of plane `c` (`checked_sizes`).
        unsafe { _mm512_maskz_loadu_ps(mask, dconv.as_ptr().add(c * stride + y * ow + x0)) }
    };
    for c in (0..o).step_by(2) {
        let pair = c + 1 < o;
        let mut acc = [[_mm512_setzero_ps(); T]; 2];
        for y in 0..oh {
            for x0 in (0..ow).step_by(16) {
                let mask = lanes_mask(ow - x0);
                let g0 = run(c, y, x0, mask);
                let g1 = if pair {
                    run(c + 1, y, x0, mask)
                } else {
                    _mm512_setzero_ps()
                };
                let taps = input_runs::<K, T>(padded, pw, y, x0, mask);
                for (t, v) in taps.into_iter().enumerate() {
                    acc[0][t] = _mm512_fmadd_ps(g0, v, acc[0][t]);
                    acc[1][t] = _mm512_fmadd_ps(g1, v, acc[1][t]);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate().take(if pair { 2 } else { 1 }) {
            for (d, &a) in dw[(c + j) * T..(c + j + 1) * T].iter_mut().zip(acc) {
                *d += _mm512_reduce_add_ps(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain sums, in `f64`.
    fn reference(
        s: &ConvShape,
        padded: &[f32],
        weight: &[f32],
        dconv: &[f32],
    ) -> (Vec<f64>, Vec<f64>) {
        let (oh, ow, pw, k) = (
            s.out_height(),
            s.out_width(),
            s.width + 2 * s.padding,
            s.kernel,
        );
        let mut out = vec![0f64; s.out_channels * oh * ow];
        let mut dw = vec![0f64; s.out_channels * k * k];
        for c in 0..s.out_channels {
            for y in 0..oh {
                for x in 0..ow {
                    for t in 0..k * k {
                        let v = padded[(y + t / k) * pw + x + t % k] as f64;
                        out[(c * oh + y) * ow + x] += weight[c * k * k + t] as f64 * v;
                        dw[c * k * k + t] += dconv[(c * oh + y) * ow + x] as f64 * v;
                    }
                }
            }
        }
        (out, dw)
    }

    /// The first layer's products are not rounded to bfloat16 at the `medium` precision.
    #[test]
    fn one_input_channel_stays_in_f32_when_bfloat16_is_asked_for() {
        let s = ConvShape {
            batch: 3,
            in_channels: 1,
            out_channels: 8,
            height: 12,
            width: 12,
            kernel: 3,
            padding: 1,
        };
        if !supports(&s) {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        let general = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919 + seed * 104729) % 1009) as f32 * 0.001_234_5 - 0.6)
                .collect()
        };
        let (x, w, b) = (general(3 * 144, 1), general(8 * 9, 2), general(8, 3));
        assert_eq!(
            super::super::forward(&s, &x, &w, &b, true),
            super::super::forward(&s, &x, &w, &b, false)
        );
        let dy = general(3 * 8 * 144, 4);
        assert_eq!(
            super::super::backward(&s, &x, &w, &dy, false, true),
            super::super::backward(&s, &x, &w, &dy, false, false)
        );
    }

    #[test]
    fn direct_sums_match_the_plain_sums() {
        if !crate::ops::lanes::available() {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        for (out_channels, height, width, kernel, padding) in [
            (32, 28, 28, 3, 0),
            (3, 28, 28, 5, 2),
            (5, 7, 19, 3, 1),
            (1, 3, 3, 3, 0),
        ] {
            let s = ConvShape {
                batch: 1,
                in_channels: 1,
                out_channels,
                height,
                width,
                kernel,
                padding,
            };
            let (ph, pw) = (height + 2 * padding, width + 2 * padding);
            let mut padded = vec![0f32; ph * pw];
            for y in 0..height {
                for x in 0..width {
                    padded[(y + padding) * pw + x + padding] =
                        ((y * 31 + x * 7) % 17) as f32 / 17.0 - 0.4;
                }
            }
            let taps = kernel * kernel;
            let weight: Vec<f32> = (0..out_channels * taps)
                .map(|i| (i % 11) as f32 * 0.1 - 0.5)
                .collect();
            let bias: Vec<f32> = (0..out_channels).map(|i| i as f32 * 0.01).collect();
            let pixels = s.out_pixels();
            let dconv: Vec<f32> = (0..out_channels * pixels)
                .map(|i| (i % 13) as f32 * 0.05 - 0.3)
                .collect();
            let mut out = vec![f32::NAN; out_channels * pixels];
            let mut dw = vec![1.0f32; out_channels * taps];
            // SAFETY: AVX-512 F is there (checked above).
            unsafe {
                forward_image(&s, &padded, &weight, &bias, &mut out, pixels);
                add_weight_gradient(&s, &padded, &dconv, pixels, &mut dw);
            }
            let (want_out, want_dw) = reference(&s, &padded, &weight, &dconv);
            for (i, (&got, want)) in out.iter().zip(&want_out).enumerate() {
                let want = want + bias[i / pixels] as f64;
                assert!(
                    (got as f64 - want).abs() < 1e-5,
                    "{s:?} out[{i}]: {got} against {want}"
                );
            }
            for (i, (&got, want)) in dw.iter().zip(&want_dw).enumerate() {
                let want = want + 1.0;
                assert!(
                    (got as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{s:?} dw[{i}]: {got} against {want}"
                );
            }
        }
    }
}
