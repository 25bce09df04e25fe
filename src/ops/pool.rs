//! 2x2 max pooling with stride 2 (odd sizes round down, as Keras's and PyTorch's default), with
//! the position of each maximum kept for the backward pass.

use rayon::prelude::*;

/// Forward over `planes` planes of `height × width`: the pooled values and, per output, which of
/// the four inputs (0..4, row-major) was the maximum.
pub fn forward(x: &[f32], planes: usize, height: usize, width: usize) -> (Vec<f32>, Vec<u8>) {
    let (oh, ow) = (height / 2, width / 2);
    let mut out = vec![0f32; planes * oh * ow];
    let mut arg = vec![0u8; planes * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(arg.par_chunks_mut(oh * ow))
        .zip(x.par_chunks(height * width))
        .for_each(|((out, arg), x)| {
            for oy in 0..oh {
                let r0 = &x[2 * oy * width..];
                let r1 = &x[(2 * oy + 1) * width..];
                for ox in 0..ow {
                    let c = [r0[2 * ox], r0[2 * ox + 1], r1[2 * ox], r1[2 * ox + 1]];
                    let mut best = 0;
                    for k in 1..4 {
                        // `>` keeps the first maximum; NaN propagates as in PyTorch.
                        if c[k] > c[best] || c[k].is_nan() {
                            best = k;
                        }
                    }
                    out[oy * ow + ox] = c[best];
                    arg[oy * ow + ox] = best as u8;
                }
            }
        });
    (out, arg)
}

/// Backward: routes each output gradient to the input that was the maximum.
pub fn backward(dy: &[f32], arg: &[u8], planes: usize, height: usize, width: usize) -> Vec<f32> {
    let (oh, ow) = (height / 2, width / 2);
    let mut dx = vec![0f32; planes * height * width];
    dx.par_chunks_mut(height * width)
        .zip(dy.par_chunks(oh * ow).zip(arg.par_chunks(oh * ow)))
        .for_each(|(dx, (dy, arg))| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let k = arg[oy * ow + ox] as usize;
                    dx[(2 * oy + k / 2) * width + 2 * ox + k % 2] = dy[oy * ow + ox];
                }
            }
        });
    dx
}
