//! 2-D convolution (stride 1, zero padding, square kernel) on the CPU: im2col per image into the
//! `gemm` crate's AVX-512 kernels, images spread over rayon's threads, with its own backward
//! (weight, bias and input gradients). At the `medium` matmul precision, on CPUs with a bfloat16
//! kernel, the three products of each image run in bfloat16 with `f32` sums instead (`tiles`, on
//! [`super::amx`]). Convolutions of one input channel skip im2col at every precision (`direct`);
//! 3x3 convolutions of 64 or more input channels run by Winograd's F(2x2, 3x3) (`winograd`), in
//! `f32`, and in bfloat16 on `vdpbf16ps` ([`path`] chooses).

use std::mem::MaybeUninit;
use std::ops::Range;

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod direct;
#[cfg(target_arch = "x86_64")]
mod gather;
mod tiles;
#[cfg(target_arch = "x86_64")]
mod winograd;

use super::add_partials;
#[cfg(target_arch = "x86_64")]
use super::lanes;
use super::matmul::matmul;
use super::written;

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

/// im2col through a zero-padded copy of the image, so that every patch row is one straight copy:
/// `cols[(c*k + ky)*k + kx][oy*ow + ox] = x[c][oy + ky - p][ox + kx - p]` (zero outside).
struct Patches<T> {
    padded: Vec<T>,
}

impl<T: Copy + Default> Patches<T> {
    fn new(s: &ConvShape) -> Self {
        let side = |n: usize| n + 2 * s.padding;
        Patches {
            // `kernel` values of slack: the tiles' forward reads each tap as whole padded rows,
            // the last one running `kernel - 1` values past the last plane.
            padded: vec![T::default(); s.in_channels * side(s.height) * side(s.width) + s.kernel],
        }
    }

    /// The patches of image `x` into `cols`, rows `stride` apart (the padding after each row is
    /// left as it is).
    fn im2col(&mut self, s: &ConvShape, x: &[T], cols: &mut [T], stride: usize) {
        self.pad(s, x);
        let (k, p) = (s.kernel, s.padding);
        let (oh, ow) = (s.out_height(), s.out_width());
        let (ph, pw) = (s.height + 2 * p, s.width + 2 * p);
        for c in 0..s.in_channels {
            let plane = &self.padded[c * ph * pw..(c + 1) * ph * pw];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut cols[((c * k + ky) * k + kx) * stride..][..oh * ow];
                    for (oy, dst) in row.chunks_exact_mut(ow).enumerate() {
                        copy_short(dst, &plane[(oy + ky) * pw + kx..][..ow]);
                    }
                }
            }
        }
    }

    /// Copies image `x` into the interior of the zero-padded planes.
    fn pad(&mut self, s: &ConvShape, x: &[T]) {
        let p = s.padding;
        let (ph, pw) = (s.height + 2 * p, s.width + 2 * p);
        for (plane, src) in self
            .padded
            .chunks_exact_mut(ph * pw)
            .zip(x.chunks_exact(s.height * s.width))
        {
            for (row, src) in plane[p * pw..]
                .chunks_mut(pw)
                .zip(src.chunks_exact(s.width))
            {
                copy_short(&mut row[p..p + s.width], src);
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short rows of small images, in fixed blocks of 8 or 4 (the
/// last one overlapping) rather than a call to `memcpy` per row.
#[inline(always)]
fn copy_short<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    assert_eq!(n, src.len());
    if n < 8 {
        if n >= 4 {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..].copy_from_slice(&src[n - 4..]);
        } else {
            dst.iter_mut().zip(src).for_each(|(d, s)| *d = *s);
        }
        return;
    }
    let mut i = 0;
    while i + 8 <= n {
        dst[i..i + 8].copy_from_slice(&src[i..i + 8]);
        i += 8;
    }
    if i < n {
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    }
}

/// The adjoint of [`Patches::im2col`]: the image gradient `dx` from `cols` (rows `stride` apart).
/// Each channel's taps are summed, in tap order, into a zero-padded plane with straight adds (no
/// bounds to clip), whose interior is then copied out; in AVX-512 as a gather with the same sums
/// ([`gather`]) where the CPU has it.
fn col2im(s: &ConvShape, cols: &[f32], stride: usize, dx: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if lanes::available() {
        // SAFETY: the CPU has AVX-512 F.
        return unsafe { gather::col2im(s, cols, stride, dx) };
    }
    col2im_scatter(s, cols, stride, dx);
}

/// [`col2im`] on any CPU.
fn col2im_scatter(s: &ConvShape, cols: &[f32], stride: usize, dx: &mut [MaybeUninit<f32>]) {
    let (k, p) = (s.kernel, s.padding);
    let (oh, ow) = (s.out_height(), s.out_width());
    let (ph, pw) = (s.height + 2 * p, s.width + 2 * p);
    let mut padded = vec![0f32; ph * pw];
    for (c, plane) in dx.chunks_exact_mut(s.height * s.width).enumerate() {
        padded.fill(0.0);
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((c * k + ky) * k + kx) * stride..][..oh * ow];
                for (oy, src) in row.chunks_exact(ow).enumerate() {
                    let dst = &mut padded[(oy + ky) * pw + kx..][..ow];
                    dst.iter_mut().zip(src).for_each(|(d, r)| *d += r);
                }
            }
        }
        for (dst, src) in plane
            .chunks_exact_mut(s.width)
            .zip(padded[p * pw..].chunks(pw))
        {
            dst.write_copy_of_slice(&src[p..p + s.width]);
        }
    }
}

/// Whether the convolution runs on [`direct`]'s kernels (one input channel, AVX-512) rather than
/// im2col and `gemm`.
fn is_direct(s: &ConvShape) -> bool {
    #[cfg(target_arch = "x86_64")]
    return direct::supports(s);
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One image's convolution into `out` (`[out_channels × pixels]`), using `patches` and `cols`
/// as scratch.
fn conv_image(
    s: &ConvShape,
    x_i: &[f32],
    weight: &[f32],
    bias: &[f32],
    (patches, cols): &mut (Patches<f32>, Vec<f32>),
    out: &mut [f32],
) {
    let (patch, pixels) = (s.patch(), s.out_pixels());
    #[cfg(target_arch = "x86_64")]
    if is_direct(s) {
        patches.pad(s, x_i);
        // SAFETY: `is_direct` checked that the CPU has AVX-512 F.
        return unsafe { direct::forward_image(s, &patches.padded, weight, bias, out, pixels) };
    }
    patches.im2col(s, x_i, cols, pixels);
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
    add_bias(out, pixels, pixels, bias);
}

/// Pools one image's convolution output (channel planes `stride` apart, their image rows `row`
/// apart) into `out` and `arg`.
fn pool_image(
    s: &ConvShape,
    conv: &[f32],
    (stride, row): (usize, usize),
    out: &mut [f32],
    arg: &mut [u8],
) {
    let pooled = s.pooled_pixels();
    for o in 0..s.out_channels {
        super::pool::pool_plane(
            &conv[o * stride..],
            (s.out_height(), s.out_width(), row),
            &mut out[o * pooled..(o + 1) * pooled],
            &mut arg[o * pooled..(o + 1) * pooled],
        );
    }
}

/// `db[c] += rows[c * len..][..len].iter().sum::<f32>()` for every `c`: the bias gradient of one
/// image. The sums sixteen rows at a time in AVX-512 where the CPU has it, bit for bit the same
/// ([`lanes`]).
fn add_row_sums(db: &mut [f32], rows: &[f32], len: usize) {
    #[cfg(target_arch = "x86_64")]
    if lanes::available() {
        let mut sums = [0f32; 16];
        for (db, rows) in db.chunks_mut(16).zip(rows.chunks(16 * len)) {
            // SAFETY: the CPU has AVX-512 F.
            unsafe { lanes::row_sums(rows, db.len(), len, len, &mut sums) };
            db.iter_mut().zip(sums).for_each(|(d, s)| *d += s);
        }
        return;
    }
    for (d, row) in db.iter_mut().zip(rows.chunks(len)) {
        *d += row.iter().sum::<f32>();
    }
}

/// Adds `bias[o]` to the first `pixels` values of row `o` (rows `stride` apart).
fn add_bias(out: &mut [f32], pixels: usize, stride: usize, bias: &[f32]) {
    for (o, &b) in bias.iter().enumerate() {
        out[o * stride..][..pixels].iter_mut().for_each(|v| *v += b);
    }
}

/// How a convolution is computed.
enum Path {
    /// im2col with bfloat16 products (`tiles`).
    Bf16Im2col,
    /// Winograd's F(2x2, 3x3) with products at this precision.
    #[cfg(target_arch = "x86_64")]
    Winograd(winograd::Precision),
    /// `f32` im2col, or direct for one input channel.
    F32,
}

/// The path of a convolution with bfloat16 products asked for when `bf16`: Winograd where it
/// applies at that precision, else im2col (a convolution of one input channel in `f32`).
fn path(s: &ConvShape, bf16: bool) -> Path {
    let bf16 = bf16 && !is_direct(s);
    #[cfg(target_arch = "x86_64")]
    {
        use winograd::Precision;
        let precision = if bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        };
        if winograd::supports(s, precision) {
            return Path::Winograd(precision);
        }
    }
    if bf16 { Path::Bf16Im2col } else { Path::F32 }
}

/// Forward: `out[n][o][y][x] = bias[o] + sum w[o][c][ky][kx] · x[n][c][y+ky-p][x+kx-p]`, the
/// products in bfloat16 when `bf16` (see [`super::amx::use_bf16`]).
pub fn forward(s: &ConvShape, x: &[f32], weight: &[f32], bias: &[f32], bf16: bool) -> Vec<f32> {
    match path(s, bf16) {
        Path::Bf16Im2col => return tiles::forward(s, x, weight, bias),
        #[cfg(target_arch = "x86_64")]
        Path::Winograd(precision) => return winograd::forward(s, x, weight, bias, precision),
        Path::F32 => {}
    }
    let mut out = vec![0f32; s.batch * s.out_image()];
    out.par_chunks_mut(s.out_image())
        .zip(x.par_chunks(s.in_image()))
        .for_each_init(
            || (Patches::new(s), vec![0f32; s.patch() * s.out_pixels()]),
            |scratch, (out_i, x_i)| conv_image(s, x_i, weight, bias, scratch, out_i),
        );
    out
}

/// Runs a convolution with 2x2 max pooling for every image of the batch in parallel (the `f32`
/// and bfloat16 paths), `scratch` made once per worker: `image(scratch, x_i, out_i, arg_i)`
/// writes the pooled values and argmax codes of one image.
fn each_pooled_image<T: Sync, S>(
    s: &ConvShape,
    x: &[T],
    scratch: impl Fn() -> S + Sync + Send,
    image: impl Fn(&mut S, &[T], &mut [f32], &mut [u8]) + Sync + Send,
) -> (Vec<f32>, Vec<u8>) {
    let per_image = s.out_channels * s.pooled_pixels();
    let mut out = vec![0f32; s.batch * per_image];
    let mut arg = vec![0u8; s.batch * per_image];
    out.par_chunks_mut(per_image)
        .zip(arg.par_chunks_mut(per_image))
        .zip(x.par_chunks(s.in_image()))
        .for_each_init(scratch, |scratch, ((out_i, arg_i), x_i)| {
            image(scratch, x_i, out_i, arg_i)
        });
    (out, arg)
}

/// Convolution followed by 2x2 max pooling, fused: each image's convolution output stays in a
/// per-thread buffer and only the pooled values (and the argmax codes) are written out; bfloat16
/// products when `bf16`. Returns `([batch, out, oh/2, ow/2]` values, argmax codes).
pub fn forward_pooled(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    bf16: bool,
) -> (Vec<f32>, Vec<u8>) {
    match path(s, bf16) {
        Path::Bf16Im2col => return tiles::forward_pooled(s, x, weight, bias),
        #[cfg(target_arch = "x86_64")]
        Path::Winograd(precision) => {
            return winograd::forward_pooled(s, x, weight, bias, precision);
        }
        Path::F32 => {}
    }
    let pixels = s.out_pixels();
    each_pooled_image(
        s,
        x,
        || {
            (
                (Patches::new(s), vec![0f32; s.patch() * pixels]),
                vec![0f32; s.out_channels * pixels],
            )
        },
        |(scratch, conv), x_i, out_i, arg_i| {
            conv_image(s, x_i, weight, bias, scratch, conv);
            pool_image(s, conv, (pixels, s.out_width()), out_i, arg_i);
        },
    )
}

/// Gradients of [`forward`] given the output gradient `dy`: `(dweight, dbias, dx)`, the input
/// gradient only when `need_dx`; bfloat16 products when `bf16`.
pub fn backward(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    need_dx: bool,
    bf16: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    if let Path::Bf16Im2col = path(s, bf16) {
        return tiles::backward(s, x, weight, dy, need_dx);
    }
    backward_with(s, x, weight, need_dx, bf16, &Given::new(s, dy))
}

/// Gradients of [`forward_pooled`] given the pooled output gradient `dy` and the argmax codes:
/// `(dweight, dbias, dx)`, the input gradient only when `need_dx`; bfloat16 products when `bf16`.
#[allow(clippy::too_many_arguments)]
pub fn backward_pooled(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    arg: &[u8],
    need_dx: bool,
    bf16: bool,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    if let Path::Bf16Im2col = path(s, bf16) {
        return tiles::backward_pooled(s, x, weight, dy, arg, need_dx);
    }
    let unpooled = Unpooled { s, dy, arg };
    backward_with(s, x, weight, need_dx, bf16, &unpooled)
}

/// The gradient with respect to a convolution's output, as the backward passes read it.
pub(super) trait OutputGradient: Sync {
    /// The gradients of images `first..first + count` (`[count × out × oh × ow]`): where they
    /// are, or written into `buffer` (grown to that length when shorter).
    fn images<'a>(&'a self, first: usize, count: usize, buffer: &'a mut Vec<f32>) -> &'a [f32];
}

/// A gradient given whole, read in place.
pub(super) struct Given<'a> {
    dy: &'a [f32],
    /// Values per image.
    image: usize,
}

impl<'a> Given<'a> {
    pub(super) fn new(s: &ConvShape, dy: &'a [f32]) -> Self {
        Given {
            dy,
            image: s.out_image(),
        }
    }
}

impl OutputGradient for Given<'_> {
    fn images<'a>(&'a self, first: usize, count: usize, _: &'a mut Vec<f32>) -> &'a [f32] {
        &self.dy[first * self.image..(first + count) * self.image]
    }
}

/// The gradient of a convolution followed by 2x2 max pooling: the pooled gradient `dy` routed
/// to the maxima that `arg` recorded.
struct Unpooled<'a> {
    s: &'a ConvShape,
    dy: &'a [f32],
    arg: &'a [u8],
}

impl OutputGradient for Unpooled<'_> {
    fn images<'a>(&'a self, first: usize, count: usize, buffer: &'a mut Vec<f32>) -> &'a [f32] {
        let (s, pixels, pooled) = (self.s, self.s.out_pixels(), self.s.pooled_pixels());
        let planes = first * s.out_channels..(first + count) * s.out_channels;
        if buffer.len() < count * s.out_image() {
            buffer.resize(count * s.out_image(), 0.0);
        }
        let buffer = &mut buffer[..count * s.out_image()];
        for (plane, dconv) in planes.zip(buffer.chunks_exact_mut(pixels)) {
            let at = plane * pooled..(plane + 1) * pooled;
            super::pool::unpool_plane(
                &self.dy[at.clone()],
                &self.arg[at],
                s.out_height(),
                s.out_width(),
                super::as_uninit(dconv),
            );
        }
        buffer
    }
}

/// The shared backward pass of the Winograd and `f32` im2col paths (bfloat16 products when
/// `bf16` and Winograd applies), from the gradient with respect to the convolution output. The
/// batch is split into one task per thread; each task accumulates its weight and bias gradients
/// (`dy_i · cols_iᵀ`) and writes its images' input gradients (`col2im(weightᵀ · dy_i)`), all in
/// per-task buffers.
fn backward_with(
    s: &ConvShape,
    x: &[f32],
    weight: &[f32],
    need_dx: bool,
    bf16: bool,
    gradient: &impl OutputGradient,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let (patch, pixels, o) = (s.patch(), s.out_pixels(), s.out_channels);
    #[cfg(target_arch = "x86_64")]
    if let Path::Winograd(precision) = path(s, bf16) {
        return winograd::backward_with(s, x, weight, need_dx, precision, gradient);
    }
    let direct = is_direct(s);
    per_task(s, need_dx, o * patch, |images, mut dx_chunk| {
        let mut dw = vec![0f32; o * patch];
        let mut db = vec![0f32; o];
        let mut cols = vec![0f32; patch * pixels];
        let mut patches = Patches::new(s);
        // Only a gradient that is not given whole is written here (grown on first use).
        let mut buffer = Vec::new();
        for i in images.clone() {
            let dconv = gradient.images(i, 1, &mut buffer);
            add_row_sums(&mut db, dconv, pixels);
            let x_i = &x[i * s.in_image()..(i + 1) * s.in_image()];
            #[cfg(target_arch = "x86_64")]
            if direct {
                patches.pad(s, x_i);
                // SAFETY: `is_direct` checked that the CPU has AVX-512 F.
                unsafe { direct::add_weight_gradient(s, &patches.padded, dconv, pixels, &mut dw) };
            }
            if !direct {
                patches.im2col(s, x_i, &mut cols, pixels);
                // dw[o×patch] += dconv[o×pixels] · cols[patch×pixels]ᵀ
                matmul(
                    o,
                    patch,
                    pixels,
                    &mut dw,
                    true,
                    dconv,
                    (pixels as isize, 1),
                    &cols,
                    (1, pixels as isize),
                    false,
                );
            }
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
                    dconv,
                    (pixels as isize, 1),
                    false,
                );
                let local = i - images.start;
                col2im(
                    s,
                    &cols,
                    pixels,
                    &mut dx_chunk[local * s.in_image()..(local + 1) * s.in_image()],
                );
            }
        }
        (dw, db)
    })
}

/// Splits the batch into one task per worker thread: `task(images, dx_chunk)` handles a range of
/// images, writes every input-gradient value of its images into `dx_chunk` (when `need_dx`; the
/// range's images from its start; the memory is not cleared first) and returns its partial
/// `(dweight, dbias)` (`dw_len` and `out_channels` values), summed here in task order.
fn per_task(
    s: &ConvShape,
    need_dx: bool,
    dw_len: usize,
    task: impl Fn(Range<usize>, Option<&mut [MaybeUninit<f32>]>) -> (Vec<f32>, Vec<f32>) + Sync,
) -> (Vec<f32>, Vec<f32>, Option<Vec<f32>>) {
    let tasks = rayon::current_num_threads().max(1).min(s.batch.max(1));
    let per_task = s.batch.div_ceil(tasks);
    let run = |dx_chunks: Vec<Option<&mut [MaybeUninit<f32>]>>| -> Vec<(Vec<f32>, Vec<f32>)> {
        dx_chunks
            .into_par_iter()
            .enumerate()
            .map(|(t, dx_chunk)| task(t * per_task..((t + 1) * per_task).min(s.batch), dx_chunk))
            .collect()
    };
    let (partials, dx) = if need_dx {
        let mut partials = Vec::new();
        let fill = |dx: &mut [MaybeUninit<f32>]| {
            partials = run(dx.chunks_mut(per_task * s.in_image()).map(Some).collect());
        };
        // SAFETY: the chunks cover `dx`, each a task's images, and each task writes every value of
        // its images (the contract above).
        let dx = unsafe { written(s.batch * s.in_image(), fill) };
        (partials, Some(dx))
    } else {
        (run((0..tasks).map(|_| None).collect()), None)
    };
    let (dw, db): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
    (
        add_partials(dw, dw_len),
        add_partials(db, s.out_channels),
        dx,
    )
}
