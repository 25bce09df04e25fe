//! 2x2 max pooling with stride 2 (odd sizes round down, as Keras's and PyTorch's default), with
//! the position of each maximum kept for the backward pass.

use std::mem::MaybeUninit;

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

/// Routes one plane's output gradient to the maxima; writes every element of `dx` (zero where no
/// maximum was, so that `dx` needs no clearing first).
pub fn unpool_plane(
    dy: &[f32],
    arg: &[u8],
    height: usize,
    width: usize,
    dx: &mut [MaybeUninit<f32>],
) {
    let (oh, ow) = (height / 2, width / 2);
    let dx = &mut dx[..height * width];
    dx.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written.
    let dx = unsafe { &mut *(dx as *mut [MaybeUninit<f32>] as *mut [f32]) };
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
    let fill = |dx: &mut [MaybeUninit<f32>]| {
        dx.par_chunks_mut(height * width)
            .zip(dy.par_chunks(oh * ow).zip(arg.par_chunks(oh * ow)))
            .for_each(|(dx, (dy, arg))| unpool_plane(dy, arg, height, width, dx))
    };
    // SAFETY: the chunks cover `dx`, and `unpool_plane` writes every value of its plane.
    unsafe { super::written(planes * height * width, fill) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On odd sizes, every input gets the gradient of the output whose maximum it was, or zero
    /// (the cropped last row and column included), whatever the memory held before.
    #[test]
    fn backward_routes_each_gradient_to_its_maximum() {
        let (planes, height, width) = (3, 5, 7);
        let x: Vec<f32> = (0..planes * height * width)
            .map(|i| ((i * 37) % 23) as f32)
            .collect();
        let (_, arg) = forward(&x, planes, height, width);
        let (oh, ow) = (height / 2, width / 2);
        let dy: Vec<f32> = (0..planes * oh * ow).map(|i| 1.0 + i as f32).collect();
        // Leave garbage behind in the allocator for the uninitialised output to land on.
        drop(vec![f32::NAN; planes * height * width]);
        let dx = backward(&dy, &arg, planes, height, width);
        let mut want = vec![0f32; planes * height * width];
        for p in 0..planes {
            for oy in 0..oh {
                for ox in 0..ow {
                    let plane = &x[p * height * width..];
                    let block = [(0, 0), (0, 1), (1, 0), (1, 1)];
                    let at = |(dy, dx): (usize, usize)| (2 * oy + dy) * width + 2 * ox + dx;
                    let first_max = |a, b| if plane[at(b)] > plane[at(a)] { b } else { a };
                    let top = block[1..].iter().copied().fold(block[0], first_max);
                    want[p * height * width + at(top)] = dy[(p * oh + oy) * ow + ox];
                }
            }
        }
        assert_eq!(dx, want);
    }
}
