//! 2-D convolution (stride 1, zero padding, square kernel) on the CPU: im2col per image into the
//! `gemm` crate's AVX-512 kernels, images spread over rayon's threads, with its own backward
//! (weight, bias and input gradients).

use rayon::prelude::*;

use super::add_partials;
use super::matmul::matmul;

/// Shapes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub batch: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub padding: usize,
}

impl ConvShape {
    pub fn out_height(&self) -> usize {
        self.height + 2 * self.padding + 1 - self.kernel
    }

    pub fn out_width(&self) -> usize {
        self.width + 2 * self.padding + 1 - self.kernel
    }

    /// Rows of the im2col matrix: `in_channels * kernel * kernel`.
    pub fn patch(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }

    /// Output pixels per channel.
    pub fn out_pixels(&self) -> usize {
        self.out_height() * self.out_width()
    }

    /// Output pixels per channel after 2x2 max pooling.
    pub fn pooled_pixels(&self) -> usize {
        (self.out_height() / 2) * (self.out_width() / 2)
    }

    fn in_image(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    fn out_image(&self) -> usize {
        self.out_channels * self.out_pixels()
    }
}

/// `cols[(c*k + ky)*k + kx][oy*ow + ox] = x[c][oy + ky - p][ox + kx - p]` (zero outside).
fn im2col(s: &ConvShape, x: &[f32], cols: &mut [f32]) {
    let (k, p) = (s.kernel, s.padding as isize);
    let (oh, ow) = (s.out_height(), s.out_width());
    for c in 0..s.in_channels {
        let plane = &x[c * s.height * s.width..(c + 1) * s.height * s.width];
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((c * k + ky) * k + kx) * oh * ow..][..oh * ow];
                for oy in 0..oh {
                    let iy = oy as isize + ky as isize - p;
                    let dst = &mut row[oy * ow..(oy + 1) * ow];
                    if iy < 0 || iy >= s.height as isize {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * s.width..(iy as usize + 1) * s.width];
                    let shift = kx as isize - p;
                    // Valid output columns: 0 <= ox + shift < width.
                    let lo = (-shift).clamp(0, ow as isize) as usize;
                    let hi = (s.width as isize - shift).clamp(0, ow as isize) as usize;
                    dst[..lo].fill(0.0);
                    if hi > lo {
                        let start = (lo as isize + shift) as usize;
                        dst[lo..hi].copy_from_slice(&src[start..start + (hi - lo)]);
                    }
                    dst[hi.max(lo)..].fill(0.0);
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: accumulates `cols` back into the image gradient `dx` (zeroed here).
fn col2im(s: &ConvShape, cols: &[f32], dx: &mut [f32]) {
    dx.fill(0.0);
    let (k, p) = (s.kernel, s.padding as isize);
    let (oh, ow) = (s.out_height(), s.out_width());
    for c in 0..s.in_channels {
        let plane = &mut dx[c * s.height * s.width..(c + 1) * s.height * s.width];
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((c * k + ky) * k + kx) * oh * ow..][..oh * ow];
                for oy in 0..oh {
                    let iy = oy as isize + ky as isize - p;
                    if iy < 0 || iy >= s.height as isize {
                        continue;
                    }
                    let dst = &mut plane[iy as usize * s.width..(iy as usize + 1) * s.width];
                    let shift = kx as isize - p;
                    let lo = (-shift).clamp(0, ow as isize) as usize;
                    let hi = (s.width as isize - shift).clamp(0, ow as isize) as usize;
                    if hi > lo {
                        let start = (lo as isize + shift) as usize;
                        // A contiguous add the compiler vectorises.
                        dst[start..start + (hi - lo)]
                            .iter_mut()
                            .zip(&row[oy * ow + lo..oy * ow + hi])
                            .for_each(|(d, r)| *d += r);
                    }
                }
            }
        }
    }
}

/// One image's convolution into `out` (`[out_channels × pixels]`), using `cols` as scratch.
fn conv_image(
    s: &ConvShape,
    x_i: &[f32],
    weight: &[f32],
    bias: &[f32],
    cols: &mut [f32],
    out: &mut [f32],
) {
    let (patch, pixels) = (s.patch(), s.out_pixels());
    im2col(s, x_i, cols);
    matmul(
        s.out_channels,
        pixels,
        patch,
        out,
        false,
        weight,
        (patch as isize, 1),
        cols,
        (pixels as isize, 1),
        false,
    );
    for (o, row) in out.chunks_mut(pixels).enumerate() {
        let b = bias[o];
        row.iter_mut().for_each(|v| *v += b);
    }
}

/// Forward: `out[n][o][y][x] = bias[o] + sum w[o][c][ky][kx] · x[n][c][y+ky-p][x+kx-p]`.
pub fn forward(s: &ConvShape, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; s.batch * s.out_image()];
    out.par_chunks_mut(s.out_image())
        .zip(x.par_chunks(s.in_image()))
        .for_each_init(
            || vec![0f32; s.patch() * s.out_pixels()],
            |cols, (out_i, x_i)| conv_image(s, x_i, weight, bias, cols, out_i),
        );
    out
}

/// Convolution followed by 2x2 max pooling, fused: each image's convolution output stays in a
/// per-thread buffer and only the pooled values (and the argmax codes) are written out.
/// Returns `([batch, out, oh/2, ow/2]` values, argmax codes).
pub fn forward_pooled(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
) -> (Vec<f32>, Vec<u8>) {
    let (pixels, pooled) = (s.out_pixels(), s.pooled_pixels());
    let mut out = vec![0f32; s.batch * s.out_channels * pooled];
    let mut arg = vec![0u8; s.batch * s.out_channels * pooled];
    out.par_chunks_mut(s.out_channels * pooled)
        .zip(arg.par_chunks_mut(s.out_channels * pooled))
        .zip(x.par_chunks(s.in_image()))
        .for_each_init(
            || {
                (
                    vec![0f32; s.patch() * pixels],
                    vec![0f32; s.out_channels * pixels],
                )
            },
            |(cols, conv), ((out_i, arg_i), x_i)| {
                conv_image(s, x_i, weight, bias, cols, conv);
                for (o, plane) in conv.chunks(pixels).enumerate() {
                    super::pool::pool_plane(
                        plane,
                        s.out_height(),
                        s.out_width(),
                        &mut out_i[o * pooled..(o + 1) * pooled],
                        &mut arg_i[o * pooled..(o + 1) * pooled],
                    );
                }
            },
        );
    (out, arg)
}

/// Gradients of [`forward`] given the output gradient `dy`: `(dweight, dbias, dx)`, the input
/// gradient only when `need_dx`.
pub fn backward(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    need_dx: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    backward_with(s, x, weight, need_dx, |i, dconv| {
        dconv.copy_from_slice(&dy[i * s.out_image()..(i + 1) * s.out_image()]);
    })
}

/// Gradients of [`forward_pooled`] given the pooled output gradient `dy` and the argmax codes:
/// `(dweight, dbias, dx)`, the input gradient only when `need_dx`.
pub fn backward_pooled(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    arg: &[u8],
    need_dx: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let (pixels, pooled, o) = (s.out_pixels(), s.pooled_pixels(), s.out_channels);
    backward_with(s, x, weight, need_dx, |i, dconv| {
        for c in 0..o {
            let at = (i * o + c) * pooled..(i * o + c + 1) * pooled;
            super::pool::unpool_plane(
                &dy[at.clone()],
                &arg[at],
                s.out_height(),
                s.out_width(),
                &mut dconv[c * pixels..(c + 1) * pixels],
            );
        }
    })
}

/// The shared backward pass. `dconv_of(i, buffer)` writes image `i`'s gradient with respect to
/// the convolution output (`[out_channels × pixels]`). The batch is split into one task per
/// thread; each task accumulates its weight and bias gradients (`dy_i · cols_iᵀ`) and writes its
/// images' input gradients (`col2im(weightᵀ · dy_i)`), all in per-task buffers.
fn backward_with(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    need_dx: bool,
    dconv_of: impl Fn(usize, &mut [f32]) + Sync,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let (patch, pixels, o) = (s.patch(), s.out_pixels(), s.out_channels);
    let tasks = rayon::current_num_threads().max(1).min(s.batch.max(1));
    let per_task = s.batch.div_ceil(tasks);
    let mut dx = need_dx.then(|| vec![0f32; s.batch * s.in_image()]);
    let dx_chunks: Vec<Option<&mut [f32]>> = match &mut dx {
        Some(dx) => dx.chunks_mut(per_task * s.in_image()).map(Some).collect(),
        None => (0..tasks).map(|_| None).collect(),
    };
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_chunks
        .into_par_iter()
        .enumerate()
        .map(|(t, mut dx_chunk)| {
            let mut dw = vec![0f32; o * patch];
            let mut db = vec![0f32; o];
            let mut cols = vec![0f32; patch * pixels];
            let mut dconv = vec![0f32; o * pixels];
            for i in t * per_task..((t + 1) * per_task).min(s.batch) {
                dconv_of(i, &mut dconv);
                for (c, row) in dconv.chunks(pixels).enumerate() {
                    db[c] += row.iter().sum::<f32>();
                }
                im2col(s, &x[i * s.in_image()..(i + 1) * s.in_image()], &mut cols);
                // dw[o×patch] += dconv[o×pixels] · cols[patch×pixels]ᵀ
                matmul(
                    o,
                    patch,
                    pixels,
                    &mut dw,
                    true,
                    &dconv,
                    (pixels as isize, 1),
                    &cols,
                    (1, pixels as isize),
                    false,
                );
                if let Some(dx_chunk) = dx_chunk.as_deref_mut() {
                    // cols[patch×pixels] = weight[o×patch]ᵀ · dconv[o×pixels], then back to the image.
                    matmul(
                        patch,
                        pixels,
                        o,
                        &mut cols,
                        false,
                        weight,
                        (1, patch as isize),
                        &dconv,
                        (pixels as isize, 1),
                        false,
                    );
                    let local = i - t * per_task;
                    col2im(
                        s,
                        &cols,
                        &mut dx_chunk[local * s.in_image()..(local + 1) * s.in_image()],
                    );
                }
            }
            (dw, db)
        })
        .collect();
    let (dw, db): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
    let (dw, db) = (add_partials(dw, o * patch), add_partials(db, o));
    (dw, db, dx)
}
