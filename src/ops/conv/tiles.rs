//! The convolution's products in bfloat16 with `f32` sums (the `medium` matmul precision, on AMX
//! tiles or AVX512-BF16, see [`amx`]): per image, the forward `out = weight · cols`, and in the backward pass
//! `dweightᵀ += cols · dconvᵀ` and `dcols = weightᵀ · dconv`, each operand converted to the
//! tiles' layout ([`amx`]) with the padding the tiles need.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::{
    ConvShape, Patches, add_bias, add_row_sums, col2im, each_pooled_image, per_task, pool_image,
};
use crate::ops::amx::{self, Aligned, pad};
use crate::ops::written;

/// [`super::forward`] in bfloat16 tiles.
pub(super) fn forward(s: &ConvShape, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let pixels = s.out_pixels();
    let tiles = TileForward::new(s, weight);
    assert_eq!(
        x.len(),
        s.batch * s.in_image(),
        "conv2d: input of another size"
    );
    let (ow, wide) = (s.out_width(), tiles.wide);
    let fill = |out: &mut [MaybeUninit<f32>]| {
        out.par_chunks_mut(s.out_image())
            .zip(x.par_chunks(s.in_image()))
            .for_each_init(
                || tiles.scratch(s),
                |scratch, (out_i, x_i)| {
                    tiles.image(s, x_i, bias, scratch);
                    for (o, plane) in out_i.chunks_mut(pixels).enumerate() {
                        let conv = &scratch.out[o * tiles.pixels..];
                        for (row, src) in plane.chunks_mut(ow).zip(conv.chunks(wide)) {
                            row.write_copy_of_slice(&src[..ow]);
                        }
                    }
                },
            )
    };
    // SAFETY: each image's output is `out_channels` planes of `oh` rows of `ow` values, each value
    // written (a row's source holds `wide >= ow` values).
    unsafe { written(s.batch * s.out_image(), fill) }
}

/// [`super::forward_pooled`] in bfloat16 tiles.
pub(super) fn forward_pooled(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
) -> (Vec<f32>, Vec<u8>) {
    let tiles = TileForward::new(s, weight);
    each_pooled_image(
        s,
        x,
        || tiles.scratch(s),
        |scratch, x_i, out_i, arg_i| {
            tiles.image(s, x_i, bias, scratch);
            pool_image(s, &scratch.out, (tiles.pixels, tiles.wide), out_i, arg_i);
        },
    )
}

/// [`super::backward`] in bfloat16 tiles.
pub(super) fn backward(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    need_dx: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let (o, pixels) = (s.out_channels, s.out_pixels());
    TileBackward::new(s, weight).run(s, x, need_dx, |i, b, db| {
        let dy_i = &dy[i * s.out_image()..(i + 1) * s.out_image()];
        add_row_sums(db, dy_i, pixels);
        amx::interleave_transposed(dy_i, o, pixels, pixels, &mut b.dconv_t, b.dconv_t_stride);
        if let Some((pairs, stride)) = b.dconv_pairs() {
            amx::interleave_rows(dy_i, o, pixels, pixels, pairs, stride);
        }
    })
}

/// [`super::backward_pooled`] in bfloat16 tiles. The gradient goes straight from the pooled
/// values to the maxima's places in both operands; the other places stay zero.
pub(super) fn backward_pooled(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    arg: &[u8],
    need_dx: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let (pooled, o) = (s.pooled_pixels(), s.out_channels);
    let (oh, ow, w) = (s.out_height() / 2, s.out_width() / 2, s.out_width());
    TileBackward::new(s, weight).run(s, x, need_dx, |i, b, db| {
        let t_stride = b.dconv_t_stride;
        b.dconv_t.fill(0);
        let dconv_t = amx::halves(&mut b.dconv_t);
        let mut pairs = b.pairs.as_mut().map(|(p, stride)| {
            p.fill(0);
            (amx::halves(p), *stride)
        });
        add_row_sums(db, &dy[i * o * pooled..(i + 1) * o * pooled], pooled);
        for c in 0..o {
            let at = (i * o + c) * pooled..(i * o + c + 1) * pooled;
            let (dy_c, arg_c) = (&dy[at.clone()], &arg[at]);
            for oy in 0..oh {
                for ox in 0..ow {
                    let (v, k) = (dy_c[oy * ow + ox], arg_c[oy * ow + ox] as usize);
                    let pixel = (2 * oy + k / 2) * w + 2 * ox + k % 2;
                    let v = amx::to_bf16(v);
                    dconv_t[((pixel / 2) * t_stride + c) * 2 + pixel % 2] = v;
                    if let Some((pairs, stride)) = pairs.as_mut() {
                        pairs[((c / 2) * *stride + pixel) * 2 + c % 2] = v;
                    }
                }
            }
        }
    })
}

/// One image rounded to bfloat16, per thread: made just before its patches are taken, so that it
/// is read from the cache rather than written to memory and read back as a whole batch would be.
#[derive(Default)]
struct Rounded(Vec<u16>);

impl Rounded {
    /// `x` rounded to bfloat16.
    fn of(&mut self, x: &[f32]) -> &[u16] {
        self.0.resize(x.len(), 0);
        amx::convert_rows(x, 1, x.len(), x.len(), &mut self.0, x.len());
        &self.0
    }
}

/// One thread's buffers for [`TileForward::image`].
struct TileForwardScratch {
    image: Rounded,
    patches: Patches<u16>,
    /// The pair-interleaved patches.
    tiles: Aligned<u32>,
    out: Aligned<f32>,
}

/// The forward product in bfloat16 tiles: the weights `[out × patch]` as tile rows (padded to
/// 16 × 32), and per-thread buffers for one image's patches (pair-interleaved) and output.
///
/// The patches are taken in the padded image's width: tap `(c, ky, kx)` is the `oh` rows of
/// padded plane `c` from row `ky`, column `kx`, each `wide` (the padded width) long, so that a
/// tap is one run of the plane rather than `oh` pieces, and two taps interleave straight into the
/// tiles' pair layout. Each output row then has `wide - ow` values that are not outputs, dropped
/// afterwards; the outputs are the same sums as from compact patches.
struct TileForward {
    weight: Aligned<u16>,
    /// Row stride of `weight`: the patch padded to 32.
    patch: usize,
    /// Output channels padded to 16.
    out_channels: usize,
    /// The padded image's width: the row stride of each output channel's rows.
    wide: usize,
    /// `oh` rows of `wide` values padded to 16: the row stride of the output buffer.
    pixels: usize,
}

impl TileForward {
    fn new(s: &ConvShape, weight: &[f32]) -> Self {
        let (patch, out_channels) = (pad(s.patch(), 32), pad(s.out_channels, 16));
        let mut tiles = Aligned::zeroed(out_channels * patch);
        amx::convert_rows(
            weight,
            s.out_channels,
            s.patch(),
            s.patch(),
            &mut tiles,
            patch,
        );
        let wide = s.width + 2 * s.padding;
        TileForward {
            weight: tiles,
            patch,
            out_channels,
            wide,
            pixels: pad(s.out_height() * wide, 16),
        }
    }

    /// Per-thread scratch. The patches' padding (rows past the patch, columns past the last
    /// output row) stays zero.
    fn scratch(&self, s: &ConvShape) -> TileForwardScratch {
        TileForwardScratch {
            image: Rounded::default(),
            patches: Patches::new(s),
            tiles: Aligned::zeroed(self.patch / 2 * self.pixels),
            out: Aligned::zeroed(self.out_channels * self.pixels),
        }
    }

    /// One image's convolution into `scratch.out` (channel rows [`Self::pixels`] apart, image
    /// rows [`Self::wide`] apart).
    fn image(&self, s: &ConvShape, x_i: &[f32], bias: &[f32], scratch: &mut TileForwardScratch) {
        let TileForwardScratch {
            image,
            patches,
            tiles,
            out,
        } = scratch;
        patches.pad(s, image.of(x_i));
        self.interleave_taps(s, &patches.padded, tiles);
        amx::gemm(
            self.out_channels,
            self.pixels,
            self.patch,
            &self.weight,
            self.patch,
            tiles,
            self.pixels,
            out,
            self.pixels,
            false,
        );
        add_bias(out, s.out_height() * self.wide, self.pixels, bias);
    }

    /// Row `j` of the pair-interleaved patches: taps `2j` and `2j + 1` (the last one alone when
    /// the patch is odd), each read from the padded planes as one run.
    fn interleave_taps(&self, s: &ConvShape, padded: &[u16], tiles: &mut [u32]) {
        let k = s.kernel;
        let plane = (s.height + 2 * s.padding) * self.wide;
        let run = s.out_height() * self.wide;
        let tap = |t: usize| {
            let (c, ky, kx) = (t / (k * k), t % (k * k) / k, t % k);
            &padded[c * plane + ky * self.wide + kx..][..run]
        };
        amx::vectorised! {
            let pairs = s.patch().div_ceil(2);
            for (j, row) in tiles.chunks_exact_mut(self.pixels).take(pairs).enumerate() {
                let (row, even) = (&mut row[..run], tap(2 * j));
                if 2 * j + 1 < s.patch() {
                    let odd = tap(2 * j + 1);
                    for ((o, &e), &d) in row.iter_mut().zip(even).zip(odd) {
                        *o = e as u32 | ((d as u32) << 16);
                    }
                } else {
                    for (o, &e) in row.iter_mut().zip(even) {
                        *o = e as u32;
                    }
                }
            }
        }
    }
}

/// The backward products in bfloat16 tiles. Per image, with `P` the patch size and `N` the
/// output pixels: `dwᵀ[P × out] += cols[P × N] · dconvᵀ[N × out]` (pairs along the pixels) and
/// `dcols[P × N] = weightᵀ[P × out] · dconv[out × N]` (pairs along the channels).
struct TileBackward {
    /// `weightᵀ` as tile rows: `[patch padded to 16 × out padded to 32]`.
    weight_t: Aligned<u16>,
    patch: usize,
    out_channels: usize,
    /// Output channels padded to 32: the inner size of the `dx` product.
    out_k: usize,
    pixels: usize,
    /// Output pixels padded to 32: the inner size of the `dw` product.
    pixels_k: usize,
}

/// Input channels per block of the input-gradient product: `dcols` rows a multiple of 32 (the
/// tiles' 2x2 blocks), under 1 MB for 3x3 kernels on 28x28 images.
const DX_CHANNELS: usize = 32;

/// One task's buffers for [`TileBackward`]; a filler writes each image's output gradient into
/// `dconv_t` (and `pairs`, when the input gradient is wanted).
struct TileScratch {
    image: Rounded,
    patches: Patches<u16>,
    cols: Aligned<u16>,
    /// `dconvᵀ`, pairs along the pixels, rows `dconv_t_stride` apart.
    dconv_t: Aligned<u32>,
    dconv_t_stride: usize,
    /// `dconv`, pairs along the channels, with the row stride; none without an input gradient.
    pairs: Option<(Aligned<u32>, usize)>,
    dw_t: Aligned<f32>,
    dcols: Aligned<f32>,
}

impl TileScratch {
    fn dconv_pairs(&mut self) -> Option<(&mut [u32], usize)> {
        self.pairs.as_mut().map(|(p, stride)| (&mut **p, *stride))
    }
}

impl TileBackward {
    fn new(s: &ConvShape, weight: &[f32]) -> Self {
        let (patch, out_channels, out_k) = (
            pad(s.patch(), 16),
            pad(s.out_channels, 16),
            pad(s.out_channels, 32),
        );
        let mut weight_t = Aligned::zeroed(patch * out_k);
        for (o, row) in weight.chunks(s.patch()).enumerate() {
            for (q, &w) in row.iter().enumerate() {
                weight_t[q * out_k + o] = amx::to_bf16(w);
            }
        }
        TileBackward {
            weight_t,
            patch,
            out_channels,
            out_k,
            pixels: pad(s.out_pixels(), 16),
            pixels_k: pad(s.out_pixels(), 32),
        }
    }

    fn scratch(&self, s: &ConvShape, need_dx: bool) -> TileScratch {
        TileScratch {
            image: Rounded::default(),
            patches: Patches::new(s),
            cols: Aligned::zeroed(self.patch * self.pixels_k),
            dconv_t: Aligned::zeroed(self.pixels_k / 2 * self.out_channels),
            dconv_t_stride: self.out_channels,
            pairs: need_dx.then(|| (Aligned::zeroed(self.out_k / 2 * self.pixels), self.pixels)),
            dw_t: Aligned::zeroed(self.patch * self.out_channels),
            dcols: Aligned::zeroed(self.patch.min(DX_CHANNELS * s.kernel * s.kernel) * self.pixels),
        }
    }

    /// As [`backward_with`], one task per thread; `fill(i, scratch, db)` writes image `i`'s
    /// output gradient into the scratch operands and adds its bias gradient to `db`.
    fn run(
        &self,
        s: &ConvShape,
        x: &[f32],
        need_dx: bool,
        fill: impl Fn(usize, &mut TileScratch, &mut [f32]) + Sync,
    ) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
        let (patch, o) = (s.patch(), s.out_channels);
        per_task(
            s,
            need_dx,
            s.out_channels * s.patch(),
            |images, mut dx_chunk| {
                let mut b = self.scratch(s, need_dx);
                let mut db = vec![0f32; o];
                for i in images.clone() {
                    fill(i, &mut b, &mut db);
                    let x_i = b.image.of(&x[i * s.in_image()..(i + 1) * s.in_image()]);
                    b.patches.im2col(s, x_i, &mut b.cols, self.pixels_k);
                    amx::gemm(
                        self.patch,
                        self.out_channels,
                        self.pixels_k,
                        &b.cols,
                        self.pixels_k,
                        &b.dconv_t,
                        b.dconv_t_stride,
                        &mut b.dw_t,
                        self.out_channels,
                        true,
                    );
                    if let (Some(dx_chunk), Some((pairs, stride))) =
                        (dx_chunk.as_deref_mut(), b.pairs.as_ref())
                    {
                        let local = i - images.start;
                        let dx_i = &mut dx_chunk[local * s.in_image()..(local + 1) * s.in_image()];
                        let plane = s.height * s.width;
                        // A block of channels at a time, so that its rows of `dcols` are still in the
                        // cache when col2im reads them (the same tile products as one call: blocks
                        // start on the 32-row grid).
                        for (block, dx_block) in dx_i.chunks_mut(DX_CHANNELS * plane).enumerate() {
                            let taps = s.kernel * s.kernel;
                            let first = block * DX_CHANNELS * taps;
                            amx::gemm(
                                pad(dx_block.len() / plane * taps, 16),
                                self.pixels,
                                self.out_k,
                                &self.weight_t[first * self.out_k..],
                                self.out_k,
                                pairs,
                                *stride,
                                &mut b.dcols,
                                self.pixels,
                                false,
                            );
                            col2im(s, &b.dcols, self.pixels, dx_block);
                        }
                    }
                }
                let mut dw = vec![0f32; o * patch];
                for (q, row) in b.dw_t.chunks(self.out_channels).take(patch).enumerate() {
                    for (c, &v) in row[..o].iter().enumerate() {
                        dw[c * patch + q] = v;
                    }
                }
                (dw, db)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::{backward, backward_pooled, forward, forward_pooled};
    use super::*;

    /// Small integers: exact in bfloat16, and so are their products and sums in `f32`, so that the
    /// tile path must give the `f32` path's results to the last bit, whatever the summation order.
    fn integers(len: usize, seed: usize, span: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104729) % (2 * span + 1)) as f32 - span as f32)
            .collect()
    }

    #[test]
    fn bfloat16_tiles_match_the_f32_path_on_exact_values() {
        for kernel in amx::tests::kernels_here() {
            amx::with_kernel(kernel, exact_values_give_the_f32_results);
        }
    }

    fn exact_values_give_the_f32_results() {
        // Channel and pixel counts that are not multiples of 16, an odd image side (two input
        // channels at least: one goes to the direct `f32` kernels at every precision).
        for (in_channels, out_channels, side, padding) in [(2, 20, 9, 1), (3, 40, 11, 0)] {
            let s = ConvShape {
                batch: 5,
                in_channels,
                out_channels,
                height: side,
                width: side,
                kernel: 3,
                padding,
            };
            let x = integers(s.batch * s.in_image(), 1, 3);
            let w = integers(out_channels * s.patch(), 2, 2);
            let b = integers(out_channels, 3, 4);
            assert_eq!(
                forward(&s, &x, &w, &b, true),
                forward(&s, &x, &w, &b, false)
            );
            let pooled = forward_pooled(&s, &x, &w, &b, false);
            assert_eq!(forward_pooled(&s, &x, &w, &b, true), pooled);
            let dy = integers(s.batch * s.out_image(), 4, 2);
            assert_eq!(
                backward(&s, &x, &w, &dy, true, true),
                backward(&s, &x, &w, &dy, true, false)
            );
            let dy = integers(pooled.0.len(), 5, 2);
            for need_dx in [true, false] {
                assert_eq!(
                    backward_pooled(&s, &x, &w, &dy, &pooled.1, need_dx, true),
                    backward_pooled(&s, &x, &w, &dy, &pooled.1, need_dx, false)
                );
            }
        }
    }

    /// On general values the tiles round each operand to bfloat16 and sum in `f32`: the result
    /// is the `f32` path's on the rounded operands, up to the order of the sums.
    #[test]
    fn bfloat16_tiles_compute_the_products_of_the_rounded_operands() {
        for kernel in amx::tests::kernels_here() {
            amx::with_kernel(kernel, general_values_give_the_rounded_products);
        }
    }

    fn general_values_give_the_rounded_products() {
        let s = ConvShape {
            batch: 4,
            in_channels: 32,
            out_channels: 64,
            height: 14,
            width: 14,
            kernel: 3,
            padding: 1,
        };
        let wave = |len: usize, f: f32| (0..len).map(|i| (i as f32 * f).sin()).collect::<Vec<_>>();
        let rounded = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|&v| f32::from_bits((amx::to_bf16(v) as u32) << 16))
                .collect()
        };
        let (x, w, b) = (
            wave(s.batch * s.in_image(), 0.37),
            wave(64 * s.patch(), 0.91),
            wave(64, 1.3),
        );
        let dy = wave(s.batch * s.out_image(), 0.53);
        let (xr, wr, dyr) = (rounded(&x), rounded(&w), rounded(&dy));
        assert_ne!(x, xr, "the test needs values that bfloat16 rounds");
        let close = |name: &str, got: &[f32], want: &[f32]| {
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            let worst = got
                .iter()
                .zip(want)
                .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
            assert!(worst <= 1e-5 * scale, "{name}: {worst} against {scale}");
        };
        let out = forward(&s, &x, &w, &b, true);
        close("forward", &out, &forward(&s, &xr, &wr, &b, false));
        let (dw, db, dx) = backward(&s, &x, &w, &dy, true, true);
        let (dw_ref, _, dx_ref) = backward(&s, &xr, &wr, &dyr, true, false);
        close("dweight", &dw, &dw_ref);
        close("dbias", &db, &backward(&s, &x, &w, &dy, false, false).1);
        match (dx, dx_ref) {
            (Some(dx), Some(dx_ref)) => close("dx", &dx, &dx_ref),
            _ => panic!("dx was asked for"),
        }
    }
}
