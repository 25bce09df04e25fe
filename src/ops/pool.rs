//! 2x2 max pooling with stride 2 (odd sizes round down, as Keras's and PyTorch's default), with
//! the position of each maximum kept for the backward pass.

use rayon::prelude::*;

/// Pools one `height × width` plane (rows `stride` apart) into `out` (`height/2 × width/2`),
/// recording in `arg` which of the four inputs (0..4, row-major) was the maximum. The first
/// maximum wins ties. (A NaN input is not propagated as PyTorch does; a NaN loss is caught by the
/// training loop anyway.)
pub fn pool_plane(
    x: &[f32],
    (height, width, stride): (usize, usize, usize),
    out: &mut [f32],
    arg: &mut [u8],
) {
    // Compiled for AVX-512 where the CPU has it: the selects run 16 outputs at a time (the
    // baseline's SSE2 code ran 4, and pooling was 4% of a speedrun step); the same selects, so
    // the same values.
    super::amx::vectorised!(pool_plane_with(x, (height, width, stride), out, arg))
}

#[inline(always)]
fn pool_plane_with(
    x: &[f32],
    (height, width, stride): (usize, usize, usize),
    out: &mut [f32],
    arg: &mut [u8],
) {
    let (oh, ow) = (height / 2, width / 2);
    for oy in 0..oh {
        let r0 = &x[2 * oy * stride..][..2 * ow];
        let r1 = &x[(2 * oy + 1) * stride..][..2 * ow];
        let out = &mut out[oy * ow..(oy + 1) * ow];
        let arg = &mut arg[oy * ow..(oy + 1) * ow];
        for ox in 0..ow {
            let (a, b, c, d) = (r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]);
            // Branch-free selects; the first maximum wins ties.
            let top_b = b > a;
            let top = if top_b { b } else { a };
            let bottom_d = d > c;
            let bottom = if bottom_d { d } else { c };
            let lower = bottom > top;
            out[ox] = if lower { bottom } else { top };
            arg[ox] = if lower {
                2 + bottom_d as u8
            } else {
                top_b as u8
            };
        }
    }
}

/// Routes one plane's output gradient to the maxima; writes every element of `dx`.
pub fn unpool_plane(dy: &[f32], arg: &[u8], height: usize, width: usize, dx: &mut [f32]) {
    let (oh, ow) = (height / 2, width / 2);
    dx.fill(0.0);
    for oy in 0..oh {
        for ox in 0..ow {
            let k = arg[oy * ow + ox] as usize;
            dx[(2 * oy + k / 2) * width + 2 * ox + k % 2] = dy[oy * ow + ox];
        }
    }
}

/// Forward over `planes` planes of `height × width`: the pooled values and the argmax codes.
pub fn forward(x: &[f32], planes: usize, height: usize, width: usize) -> (Vec<f32>, Vec<u8>) {
    let (oh, ow) = (height / 2, width / 2);
    let mut out = vec![0f32; planes * oh * ow];
    let mut arg = vec![0u8; planes * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(arg.par_chunks_mut(oh * ow))
        .zip(x.par_chunks(height * width))
        .for_each(|((out, arg), x)| pool_plane(x, (height, width, width), out, arg));
    (out, arg)
}

/// Backward: routes each output gradient to the input that was the maximum.
pub fn backward(dy: &[f32], arg: &[u8], planes: usize, height: usize, width: usize) -> Vec<f32> {
    let (oh, ow) = (height / 2, width / 2);
    let mut dx = vec![0f32; planes * height * width];
    dx.par_chunks_mut(height * width)
        .zip(dy.par_chunks(oh * ow).zip(arg.par_chunks(oh * ow)))
        .for_each(|(dx, (dy, arg))| unpool_plane(dy, arg, height, width, dx));
    dx
}
