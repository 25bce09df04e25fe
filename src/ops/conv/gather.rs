//! [`super::col2im`] as a gather in AVX-512: each 16-pixel run of an input-gradient row sums its
//! taps' shifted rows of `cols` in a register and is stored once. The scatter (every tap's row
//! added into a padded plane) stalls here on loads of values just stored at a neighbouring offset,
//! which the processor cannot forward; it made col2im a tenth of a ResNet training step.
//!
//! The sums are the scatter's, bit for bit: each pixel starts from `+0.0` and adds its taps in
//! the same order; a tap that falls outside the output adds a masked-off `+0.0`, which changes no
//! sum (a sum that starts at `+0.0` is never `-0.0`).

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use super::ConvShape;

/// Input-gradient rows summed together: independent sums keep the adder busy (each sum's adds
/// must stay in order, one after the other).
const ROWS: usize = 4;

/// `dx` from `cols` (rows `stride` apart), as [`super::col2im`].
#[target_feature(enable = "avx512f")]
pub(super) fn col2im(s: &ConvShape, cols: &[f32], stride: usize, dx: &mut [MaybeUninit<f32>]) {
    let (k, p) = (s.kernel, s.padding);
    let (oh, ow) = (s.out_height(), s.out_width());
    let (h, w) = (s.height, s.width);
    let channels = dx.len() / (h * w);
    assert_eq!(channels * h * w, dx.len(), "col2im: a partial plane");
    assert!(
        channels == 0 || cols.len() >= ((channels * k * k - 1) * stride + oh * ow),
        "col2im: cols too short"
    );
    // Per 16-pixel run from x0 and tap column kx: the output column lane 0 reads
    // (x0 + p - kx) and the lanes inside the output.
    let runs: Vec<(usize, Vec<(isize, u16)>)> = (0..w)
        .step_by(16)
        .map(|x0| {
            let lanes = (w - x0).min(16) as isize;
            let taps = (0..k)
                .map(|kx| {
                    let first = (x0 + p) as isize - kx as isize;
                    let from = (-first).clamp(0, 16) as u32;
                    let to = (ow as isize - first).clamp(0, lanes) as u32;
                    let mask = if from < to {
                        (1u32 << to) - (1u32 << from)
                    } else {
                        0
                    };
                    (first, mask as u16)
                })
                .collect();
            (x0, taps)
        })
        .collect();
    for (c, plane) in dx.chunks_exact_mut(h * w).enumerate() {
        let taps = cols[c * k * k * stride..].as_ptr();
        for y0 in (0..h).step_by(ROWS) {
            for (x0, run) in &runs {
                let mut sums = [_mm512_setzero_ps(); ROWS];
                for ky in 0..k {
                    for (kx, &(first, mask)) in run.iter().enumerate() {
                        let tap = ((ky * k + kx) * stride) as isize + first;
                        for (r, sum) in sums.iter_mut().enumerate() {
                            // The output row this tap reads for row y0 + r: y0 + r + p - ky.
                            let oy = (y0 + r + p) as isize - ky as isize;
                            let mask = if (0..oh as isize).contains(&oy) {
                                mask
                            } else {
                                0
                            };
                            let at = tap + oy * ow as isize;
                            // SAFETY: the lanes in `mask` read output columns 0..ow of output
                            // row `oy` of this tap, inside `cols` (asserted above); masked-off
                            // lanes are not read (AVX-512 masked loads skip them), whatever their
                            // address.
                            let v =
                                unsafe { _mm512_maskz_loadu_ps(mask, taps.wrapping_offset(at)) };
                            *sum = _mm512_add_ps(*sum, v);
                        }
                    }
                }
                let lanes = (w - x0).min(16);
                let mask = (u32::MAX >> (32 - lanes)) as u16;
                for (row, sum) in plane[y0 * w..].chunks_exact_mut(w).zip(sums) {
                    // SAFETY: the `lanes` values from `x0` lie inside this row of `dx`.
                    unsafe { _mm512_mask_storeu_ps(row[*x0..].as_mut_ptr().cast(), mask, sum) };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gather_sums_as_the_scatter_does_bit_for_bit() {
        if !crate::ops::lanes::available() {
            eprintln!("no AVX-512 here: nothing to compare");
            return;
        }
        let sizes = [(28, 28), (14, 14), (7, 7), (5, 9), (17, 33), (1, 1)];
        for (kernel, padding) in [(3, 1), (1, 0), (3, 0), (5, 2), (3, 2)] {
            for (height, width) in sizes {
                let s = ConvShape {
                    batch: 1,
                    in_channels: 3,
                    out_channels: 1,
                    height,
                    width,
                    kernel,
                    padding,
                };
                if height + 2 * padding < kernel || width + 2 * padding < kernel {
                    continue;
                }
                // Rows a few values longer than the output, as the tiles' padded rows are.
                let stride = s.out_pixels() + 5;
                let mut cols: Vec<f32> = (0..s.patch() * stride)
                    .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 0.013)
                    .collect();
                cols[1] = -0.0;
                cols[stride + 2] = f32::NAN;
                cols[2 * stride] = -0.0;
                let mut want = vec![MaybeUninit::new(1f32); s.in_image()];
                let mut got = vec![MaybeUninit::new(2f32); s.in_image()];
                super::super::col2im_scatter(&s, &cols, stride, &mut want);
                // SAFETY: `lanes::available` said the CPU has AVX-512 F.
                unsafe { col2im(&s, &cols, stride, &mut got) };
                // SAFETY: initialised above (and written over by both).
                let bits = |v: &[MaybeUninit<f32>]| {
                    v.iter()
                        .map(|x| unsafe { x.assume_init() }.to_bits())
                        .collect::<Vec<_>>()
                };
                assert_eq!(bits(&got), bits(&want), "{s:?}");
            }
        }
    }
}
