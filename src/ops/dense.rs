//! Dense (fully connected) layers on the CPU: `y = act(x · w + b)` in one pass, with its own
//! backward (weight, bias and, when asked for, input gradients).
//!
//! Layers with few outputs (the linear model, output layers) use their own AVX-512 kernels: the
//! forward pass as one dot product per output, the weight gradient 16 inputs at a time with every
//! output in registers; the `gemm` crate's tiles would be mostly empty there. Other layers go to
//! `gemm`, one block of rows per worker thread.

use rayon::prelude::*;

use super::matmul::{PARALLEL_MIN_WORK, matmul, matmul_rows};
use super::{add_partials, rows_per_worker};

const LANES: usize = 16;
/// Narrow layers need at least this many inputs.
const NARROW_MIN_INPUTS: usize = 32;

/// Activation fused into the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fused {
    Identity,
    Relu,
    /// One whose gradient follows from its output (not GELU, see
    /// [`super::activation::backward_needs_input`]).
    Activation(crate::model::ActivationKind),
}

/// Shapes of one dense layer: `x` is `[rows, inputs]`, `w` is `[inputs, outputs]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseShape {
    pub rows: usize,
    pub inputs: usize,
    pub outputs: usize,
}

/// Forward: `y = act(x · w + b)`, `[rows, outputs]`.
pub fn forward(s: &DenseShape, x: &[f32], w: &[f32], b: &[f32], act: Fused) -> Vec<f32> {
    let mut y = vec![0f32; s.rows * s.outputs];
    if is_narrow(s) {
        narrow_forward(s, x, w, b, &mut y);
    } else {
        for row in y.chunks_mut(s.outputs) {
            row.copy_from_slice(b);
        }
        matmul_rows(
            s.rows,
            s.outputs,
            s.inputs,
            &mut y,
            true,
            x,
            (s.inputs as isize, 1),
            w,
            (s.outputs as isize, 1),
        );
    }
    match act {
        Fused::Identity => {}
        Fused::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Fused::Activation(kind) => super::activation::forward_in_place(kind, &mut y),
    }
    y
}

/// Gradients of one dense layer: `(dw [inputs, outputs], db [outputs], dx [rows, inputs] when
/// asked for)`.
pub type DenseGrads = (Vec<f32>, Vec<f32>, Option<Vec<f32>>);

/// Backward of [`forward`]: `y` is the forward's output (for the ReLU mask), `dy` the gradient of
/// the loss with respect to it.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: &DenseShape,
    x: &[f32],
    w: &[f32],
    y: &[f32],
    dy: &[f32],
    act: Fused,
    need_dx: bool,
) -> DenseGrads {
    let masked;
    let g: &[f32] = match act {
        Fused::Identity => dy,
        Fused::Relu => {
            masked = dy
                .iter()
                .zip(y)
                .map(|(&d, &o)| if o > 0.0 { d } else { 0.0 })
                .collect::<Vec<f32>>();
            &masked
        }
        Fused::Activation(kind) => {
            masked = super::activation::backward(kind, y, dy);
            &masked
        }
    };
    let mut db = vec![0f32; s.outputs];
    for row in g.chunks(s.outputs) {
        db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
    }
    let dw = if is_narrow(s) {
        narrow_weight_grad(s, x, g)
    } else {
        gemm_weight_grad(s, x, g)
    };
    let dx = need_dx.then(|| {
        let mut dx = vec![0f32; s.rows * s.inputs];
        // dx = g · wᵀ
        matmul_rows(
            s.rows,
            s.inputs,
            s.outputs,
            &mut dx,
            false,
            g,
            (s.outputs as isize, 1),
            w,
            (1, s.outputs as isize),
        );
        dx
    });
    (dw, db, dx)
}

/// `dw = xᵀ · g` by the `gemm` crate: one partial sum per worker over its own block of rows (the
/// rows it computed in the forward pass, still in its cache), then added up in block order.
fn gemm_weight_grad(s: &DenseShape, x: &[f32], g: &[f32]) -> Vec<f32> {
    let rows = if s.rows * s.inputs * s.outputs >= PARALLEL_MIN_WORK {
        rows_per_worker(s.rows)
    } else {
        s.rows.max(1)
    };
    add_partials(
        x.par_chunks(rows * s.inputs)
            .zip(g.par_chunks(rows * s.outputs))
            .map(|(x, g)| {
                let mut dw = vec![0f32; s.inputs * s.outputs];
                let block_rows = g.len() / s.outputs;
                matmul(
                    s.inputs,
                    s.outputs,
                    block_rows,
                    &mut dw,
                    false,
                    x,
                    (1, s.inputs as isize),
                    g,
                    (s.outputs as isize, 1),
                    false,
                );
                dw
            })
            .collect::<Vec<_>>(),
        s.inputs * s.outputs,
    )
}

/// Whether the narrow kernels apply: few outputs (the linear model, output layers) from many
/// inputs, where the `gemm` crate's tiles are mostly empty.
fn is_narrow(s: &DenseShape) -> bool {
    #[cfg(target_arch = "x86_64")]
    return s.outputs <= LANES
        && s.inputs >= NARROW_MIN_INPUTS
        && std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `y[r][o] = b[o] + x[r] · wᵀ[o]`: one dot product per output, 16 inputs per step.
fn narrow_forward(s: &DenseShape, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let mut wt = vec![0f32; s.outputs * s.inputs];
    for (i, row) in w.chunks(s.outputs).enumerate() {
        for (o, &v) in row.iter().enumerate() {
            wt[o * s.inputs + i] = v;
        }
    }
    let rows = rows_per_worker(s.rows);
    y.par_chunks_mut(rows * s.outputs)
        .zip(x.par_chunks(rows * s.inputs))
        .for_each(|(y, x)| {
            for (out, rows) in y.chunks_mut(2 * s.outputs).zip(x.chunks(2 * s.inputs)) {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `is_narrow` checked AVX-512F; the slices have the layer's shapes.
                unsafe {
                    avx512::dot_rows(s, rows, &wt, b, out)
                };
            }
        });
}

/// `dw = xᵀ · g` for narrow layers: 16 inputs at a time, all outputs in registers.
fn narrow_weight_grad(s: &DenseShape, x: &[f32], g: &[f32]) -> Vec<f32> {
    let rows = rows_per_worker(s.rows);
    add_partials(
        x.par_chunks(rows * s.inputs)
            .zip(g.par_chunks(rows * s.outputs))
            .map(|(x, g)| {
                let block = DenseShape {
                    rows: g.len() / s.outputs,
                    ..*s
                };
                let mut dw = vec![0f32; s.inputs * s.outputs];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `is_narrow` checked AVX-512F; the slices have the block's shapes.
                unsafe {
                    avx512::weight_grad(&block, x, g, &mut dw)
                };
                dw
            })
            .collect::<Vec<_>>(),
        s.inputs * s.outputs,
    )
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{DenseShape, LANES};

    /// Mask of the valid lanes of the vector that starts at column `col` of `outputs`.
    #[inline(always)]
    fn lanes(col: usize, outputs: usize) -> __mmask16 {
        let valid = outputs.saturating_sub(col).min(LANES);
        ((1u32 << valid) - 1) as __mmask16
    }

    /// Calls `$f::<M>($args)` with `M` the number of outputs (1 to 16) as a constant, so that
    /// the per-output accumulators stay in registers.
    macro_rules! with_outputs {
        ($m:expr, $f:ident ( $($arg:expr),* )) => {
            match $m {
                1 => $f::<1>($($arg),*),
                2 => $f::<2>($($arg),*),
                3 => $f::<3>($($arg),*),
                4 => $f::<4>($($arg),*),
                5 => $f::<5>($($arg),*),
                6 => $f::<6>($($arg),*),
                7 => $f::<7>($($arg),*),
                8 => $f::<8>($($arg),*),
                9 => $f::<9>($($arg),*),
                10 => $f::<10>($($arg),*),
                11 => $f::<11>($($arg),*),
                12 => $f::<12>($($arg),*),
                13 => $f::<13>($($arg),*),
                14 => $f::<14>($($arg),*),
                15 => $f::<15>($($arg),*),
                _ => $f::<16>($($arg),*),
            }
        };
    }

    /// One or two output rows of a narrow layer: `out[r][o] = b[o] + rows[r] · wt[o]`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_rows(s: &DenseShape, rows: &[f32], wt: &[f32], b: &[f32], out: &mut [f32]) {
        // SAFETY: forwarded from the caller.
        unsafe { with_outputs!(s.outputs, dot_rows_m(s.inputs, rows, wt, b, out)) }
    }

    /// Two rows share each load of `wt` when their `2 M` sums fit in the registers.
    #[target_feature(enable = "avx512f")]
    unsafe fn dot_rows_m<const M: usize>(
        inputs: usize,
        rows: &[f32],
        wt: &[f32],
        b: &[f32],
        out: &mut [f32],
    ) {
        debug_assert!(wt.len() == M * inputs && out.len() * inputs == rows.len() * M);
        // SAFETY (whole body): masked loads stay inside `rows` and the rows of `wt`.
        unsafe {
            if M > 12 || rows.len() < 2 * inputs {
                for (row, out) in rows.chunks(inputs).zip(out.chunks_mut(M)) {
                    let mut acc = [_mm512_setzero_ps(); M];
                    for start in (0..inputs).step_by(LANES) {
                        let valid = lanes(start, inputs);
                        let xv = _mm512_maskz_loadu_ps(valid, row.as_ptr().add(start));
                        for (o, a) in acc.iter_mut().enumerate() {
                            let wv =
                                _mm512_maskz_loadu_ps(valid, wt.as_ptr().add(o * inputs + start));
                            *a = _mm512_fmadd_ps(xv, wv, *a);
                        }
                    }
                    for (o, a) in acc.iter().enumerate() {
                        out[o] = b[o] + _mm512_reduce_add_ps(*a);
                    }
                }
                return;
            }
            let (first, second) = rows.split_at(inputs);
            let mut acc = [[_mm512_setzero_ps(); M]; 2];
            for start in (0..inputs).step_by(LANES) {
                let valid = lanes(start, inputs);
                let x0 = _mm512_maskz_loadu_ps(valid, first.as_ptr().add(start));
                let x1 = _mm512_maskz_loadu_ps(valid, second.as_ptr().add(start));
                let [first_sums, second_sums] = &mut acc;
                for (o, (a0, a1)) in first_sums.iter_mut().zip(second_sums).enumerate() {
                    let wv = _mm512_maskz_loadu_ps(valid, wt.as_ptr().add(o * inputs + start));
                    *a0 = _mm512_fmadd_ps(x0, wv, *a0);
                    *a1 = _mm512_fmadd_ps(x1, wv, *a1);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                for (o, a) in acc.iter().enumerate() {
                    out[r * M + o] = b[o] + _mm512_reduce_add_ps(*a);
                }
            }
        }
    }

    /// `dw = xᵀ · g` over the rows of `x`: 16 inputs by all outputs in registers, over blocks of
    /// a few rows of `x` that stay in L1.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn weight_grad(s: &DenseShape, x: &[f32], g: &[f32], dw: &mut [f32]) {
        // SAFETY: forwarded from the caller.
        unsafe { with_outputs!(s.outputs, weight_grad_m(s, x, g, dw)) }
    }

    /// Rows of `x` summed in registers before the running sums are updated.
    const ROW_BLOCK: usize = 8;

    #[target_feature(enable = "avx512f")]
    unsafe fn weight_grad_m<const M: usize>(s: &DenseShape, x: &[f32], g: &[f32], dw: &mut [f32]) {
        let count = s.inputs;
        let chunks = count.div_ceil(LANES);
        let mut sums = vec![[_mm512_setzero_ps(); M]; chunks];
        // SAFETY (whole body): masked loads stay inside row `r` of `x` (`lanes` stops at
        // `inputs`); `g` has `M` values per row.
        unsafe {
            for block in (0..s.rows).step_by(ROW_BLOCK) {
                let end = (block + ROW_BLOCK).min(s.rows);
                // Two chunks of 16 inputs share each broadcast of `g` when their `2 M` sums fit
                // in the registers.
                let pair = if M <= 12 { 2 } else { 1 };
                for (c, sum) in sums.chunks_mut(pair).enumerate() {
                    let start = c * pair * LANES;
                    let valid = [lanes(start, s.inputs), lanes(start + LANES, s.inputs)];
                    let mut acc = [[_mm512_setzero_ps(); M]; 2];
                    for r in block..end {
                        let at = x.as_ptr().add(r * s.inputs + start);
                        let x0 = _mm512_maskz_loadu_ps(valid[0], at);
                        let x1 = if pair == 2 {
                            _mm512_maskz_loadu_ps(valid[1], at.add(LANES))
                        } else {
                            _mm512_setzero_ps()
                        };
                        let g_row = g.as_ptr().add(r * M);
                        let [first_sums, second_sums] = &mut acc;
                        for (o, (a0, a1)) in first_sums.iter_mut().zip(second_sums).enumerate() {
                            let gv = _mm512_set1_ps(*g_row.add(o));
                            *a0 = _mm512_fmadd_ps(x0, gv, *a0);
                            if pair == 2 {
                                *a1 = _mm512_fmadd_ps(x1, gv, *a1);
                            }
                        }
                    }
                    for (total, acc) in sum.iter_mut().zip(&acc) {
                        for (t, a) in total.iter_mut().zip(acc) {
                            *t = _mm512_add_ps(*t, *a);
                        }
                    }
                }
            }
            let mut column = [0f32; LANES];
            for (c, sum) in sums.iter().enumerate() {
                for (o, total) in sum.iter().enumerate() {
                    _mm512_storeu_ps(column.as_mut_ptr(), *total);
                    for (i, &v) in column.iter().enumerate().take(count - c * LANES) {
                        dw[(c * LANES + i) * M + o] = v;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix with about `zeros` of its entries zero.
    fn matrix(len: usize, seed: u64, zeros: f64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                if u < zeros {
                    0.0
                } else {
                    (u * 2.0 - 1.0) as f32
                }
            })
            .collect()
    }

    fn reference(s: &DenseShape, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; s.rows * s.outputs];
        for r in 0..s.rows {
            for o in 0..s.outputs {
                let dot: f64 = (0..s.inputs)
                    .map(|i| x[r * s.inputs + i] as f64 * w[i * s.outputs + o] as f64)
                    .sum();
                y[r * s.outputs + o] = (dot + b[o] as f64) as f32;
            }
        }
        y
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: length");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    #[test]
    fn narrow_and_gemm_paths_match_a_reference() {
        for (rows, inputs, outputs, zeros) in [
            (37, 300, 10, 0.5),
            (1030, 784, 10, 0.5),
            (64, 784, 60, 0.5),
            (5, 257, 70, 0.9),
            (33, 20, 7, 0.5),
            (9, 400, 130, 0.0),
            (17, 100, 16, 0.2),
            (3, 64, 1, 0.0),
        ] {
            let s = DenseShape {
                rows,
                inputs,
                outputs,
            };
            let x = matrix(rows * inputs, 1, zeros);
            let w = matrix(inputs * outputs, 2, 0.0);
            let b = matrix(outputs, 3, 0.0);
            let y = forward(&s, &x, &w, &b, Fused::Identity);
            assert_close(&y, &reference(&s, &x, &w, &b), "forward");

            let dy = matrix(rows * outputs, 4, 0.0);
            let (dw, db, dx) = backward(&s, &x, &w, &y, &dy, Fused::Identity, true);
            let xt: Vec<f32> = (0..inputs * rows)
                .map(|i| x[(i % rows) * inputs + i / rows])
                .collect();
            let ts = DenseShape {
                rows: inputs,
                inputs: rows,
                outputs,
            };
            assert_close(&dw, &reference(&ts, &xt, &dy, &vec![0.0; outputs]), "dw");
            let ones = vec![1f32; rows];
            let ds = DenseShape {
                rows: 1,
                inputs: rows,
                outputs,
            };
            assert_close(&db, &reference(&ds, &ones, &dy, &vec![0.0; outputs]), "db");
            let wt: Vec<f32> = (0..outputs * inputs)
                .map(|i| w[(i % inputs) * outputs + i / inputs])
                .collect();
            let xs = DenseShape {
                rows,
                inputs: outputs,
                outputs: inputs,
            };
            let dx = dx.expect("dx was asked for");
            assert_close(&dx, &reference(&xs, &dy, &wt, &vec![0.0; inputs]), "dx");
        }
    }

    #[test]
    fn relu_is_fused_and_masks_the_gradient() {
        let s = DenseShape {
            rows: 8,
            inputs: 300,
            outputs: 20,
        };
        let x = matrix(8 * 300, 5, 0.5);
        let w = matrix(300 * 20, 6, 0.0);
        let b = matrix(20, 7, 0.0);
        let y = forward(&s, &x, &w, &b, Fused::Relu);
        let plain: Vec<f32> = reference(&s, &x, &w, &b)
            .iter()
            .map(|v| v.max(0.0))
            .collect();
        assert_close(&y, &plain, "relu forward");
        assert!(y.contains(&0.0) && y.iter().any(|&v| v > 0.0));
        let dy = vec![1f32; 8 * 20];
        let (_, db, _) = backward(&s, &x, &w, &y, &dy, Fused::Relu, false);
        for (o, d) in db.iter().enumerate() {
            let active = (0..8).filter(|r| y[r * 20 + o] > 0.0).count();
            assert_eq!(*d, active as f32);
        }
    }
}
