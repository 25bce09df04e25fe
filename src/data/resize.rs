//! Progressive resizing (as in fast.ai's and Keller Jordan's speedruns): the first epochs of a
//! run train on downscaled images, which cost a fraction of the full-size convolutions, and the
//! last ones at 28x28, the size the model is tested at. Downscaling averages areas: each output
//! pixel is the mean of the source pixels it covers, a partly covered pixel weighted by its
//! covered share, so no detail is skipped (as plain bilinear sampling would) and a constant image
//! stays constant.

use rayon::prelude::*;

use super::SIDE;

/// The sides a run may train at before 28: multiples of 4 (two 2x2 poolings divide them
/// evenly), at least 8.
pub fn is_trainable_side(side: usize) -> bool {
    (8..SIDE).contains(&side) && side.is_multiple_of(4)
}

/// `[to, from]` weights: row `i` spreads output pixel `i` over the source pixels it covers.
fn area_weights(from: usize, to: usize) -> Vec<f32> {
    let scale = from as f64 / to as f64;
    let mut weights = vec![0f32; to * from];
    for (i, row) in weights.chunks_mut(from).enumerate() {
        let (start, end) = (i as f64 * scale, (i + 1) as f64 * scale);
        for (j, w) in row.iter_mut().enumerate() {
            let covered = end.min(j as f64 + 1.0) - start.max(j as f64);
            *w = (covered.max(0.0) / scale) as f32;
        }
    }
    weights
}

/// `images` (square images of side `from`, one after the other, row-major) downscaled to side
/// `to` by area averaging: each image `W X Wᵀ` with `W` the `[to, from]` area weights.
pub fn downscale(images: &[f32], from: usize, to: usize) -> Vec<f32> {
    assert!(to <= from && to > 0, "downscale: {from} -> {to}");
    assert_eq!(images.len() % (from * from), 0, "downscale: image size");
    let weights = area_weights(from, to);
    let mut out = vec![0f32; images.len() / (from * from) * to * to];
    out.par_chunks_mut(to * to)
        .zip(images.par_chunks(from * from))
        .for_each_init(
            || vec![0f32; from * to],
            |narrow, (out, image)| {
                // Columns first: `narrow[r][j] = Σ_c X[r][c] W[j][c]`, `[from, to]`, in a buffer
                // made once per worker.
                for (source, row) in image.chunks(from).zip(narrow.chunks_mut(to)) {
                    for (n, w) in row.iter_mut().zip(weights.chunks(from)) {
                        *n = source.iter().zip(w).map(|(x, w)| x * w).sum();
                    }
                }
                // Then rows: `out[i][j] = Σ_r W[i][r] narrow[r][j]`.
                for (row, w) in out.chunks_mut(to).zip(weights.chunks(from)) {
                    for (j, o) in row.iter_mut().enumerate() {
                        *o = w.iter().zip(narrow.chunks(to)).map(|(w, n)| w * n[j]).sum();
                    }
                }
            },
        );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_averages_each_two_by_two_block() {
        let image: Vec<f32> = (0..SIDE * SIDE).map(|i| (i % 97) as f32).collect();
        let half = downscale(&image, SIDE, SIDE / 2);
        for i in 0..SIDE / 2 {
            for j in 0..SIDE / 2 {
                let at = |r: usize, c: usize| image[(2 * i + r) * SIDE + 2 * j + c];
                let mean = (at(0, 0) + at(0, 1) + at(1, 0) + at(1, 1)) / 4.0;
                let got = half[i * SIDE / 2 + j];
                assert!(
                    (got - mean).abs() < 1e-4,
                    "({i}, {j}): {got} against {mean}"
                );
            }
        }
    }

    #[test]
    fn every_side_keeps_a_constant_image_and_the_mean() {
        let two: Vec<f32> = (0..2 * SIDE * SIDE)
            .map(|i| {
                if i < SIDE * SIDE {
                    0.75
                } else {
                    (i % 13) as f32
                }
            })
            .collect();
        for side in (8..SIDE).filter(|&s| is_trainable_side(s)) {
            let out = downscale(&two, SIDE, side);
            assert_eq!(out.len(), 2 * side * side);
            let (constant, other) = out.split_at(side * side);
            assert!(constant.iter().all(|&v| (v - 0.75).abs() < 1e-5), "{side}");
            let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
            let want = mean(&two[SIDE * SIDE..]);
            assert!((mean(other) - want).abs() < 1e-3, "{side}: {}", mean(other));
        }
        assert_eq!(
            (8..=SIDE)
                .filter(|&s| is_trainable_side(s))
                .collect::<Vec<_>>(),
            [8, 12, 16, 20, 24]
        );
    }

    #[test]
    fn a_garment_on_the_left_stays_on_the_left() {
        // The left half bright, the right half dark: at 20 pixels the first 10 columns are bright
        // and the last 10 dark (column 10 is exactly at the border, 14 source pixels).
        let image: Vec<f32> = (0..SIDE * SIDE)
            .map(|i| if i % SIDE < SIDE / 2 { 1.0 } else { 0.0 })
            .collect();
        let out = downscale(&image, SIDE, 20);
        for row in out.chunks(20) {
            assert!(row[..10].iter().all(|&v| (v - 1.0).abs() < 1e-5), "{row:?}");
            assert!(row[10..].iter().all(|&v| v.abs() < 1e-5), "{row:?}");
        }
    }
}
