//! The `gemm` crate behind one row-major call.

/// Row-major `dst[m×n] (+)= a[m×k] · b[k×n]`, with explicit strides for transposed operands.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    (a_rs, a_cs): (isize, isize),
    b: &[f32],
    (b_rs, b_cs): (isize, isize),
    parallel: bool,
) {
    debug_assert!(dst.len() >= m * n);
    // SAFETY: the slices outlive the call and cover every index the strides reach: `dst` is
    // m×n row-major, and the callers pass strides that stay within `a` and `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            if parallel {
                gemm::Parallelism::Rayon(0)
            } else {
                gemm::Parallelism::None
            },
        );
    }
}

/// Smallest product (`m·n·k`) worth spreading over threads.
pub const PARALLEL_MIN_WORK: usize = 1 << 18;

/// [`matmul`] with the rows of `dst` split into one block per worker thread, each a
/// single-threaded product: for the thin matrices of dense layers this beats the `gemm` crate's
/// own parallelism, which splits finer and synchronises more.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    (a_rs, a_cs): (isize, isize),
    b: &[f32],
    b_strides: (isize, isize),
) {
    use rayon::prelude::*;
    let tasks = if m * n * k >= PARALLEL_MIN_WORK {
        rayon::current_num_threads().clamp(1, m.max(1))
    } else {
        1
    };
    let rows = m.div_ceil(tasks).max(1);
    dst[..m * n]
        .par_chunks_mut(rows * n)
        .enumerate()
        .for_each(|(t, block)| {
            let first = t * rows;
            let count = block.len() / n.max(1);
            matmul(
                count,
                n,
                k,
                block,
                accumulate,
                &a[first * a_rs as usize..],
                (a_rs, a_cs),
                b,
                b_strides,
                false,
            );
        });
}
