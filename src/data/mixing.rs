//! Mixing images of a batch in pairs, the labels mixed in the same proportion: mixup (Zhang et
//! al. 2018, "mixup: Beyond Empirical Risk Minimization": `λ x_i + (1 - λ) x_j`) and cutmix (Yun
//! et al. 2019, "CutMix": a rectangle of `x_j` pasted into `x_i`, `λ` the share of `x_i` left).
//! As timm does, `λ ~ Beta(α, α)` is drawn once per batch and image `i` is paired with image
//! `n - 1 - i` (the batch reversed), so the loss is `λ CE(y_i) + (1 - λ) CE(y_{n-1-i})`.

use rand::{Rng, RngExt};

use super::{PIXELS, SIDE};

/// Which mixing a batch gets: `α` of mixup and of cutmix, 0 for off; with both on, each batch
/// gets one of them, chosen with even odds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Mixing {
    pub mixup: f64,
    pub cutmix: f64,
}

impl Mixing {
    pub fn is_off(&self) -> bool {
        self.mixup == 0.0 && self.cutmix == 0.0
    }

    /// Mixes the `n * 784` scaled pixels of a batch in place (image `i` with image `n - 1 - i`)
    /// and returns the share `λ` that each image keeps of itself; `None` when mixing is off.
    pub fn apply(&self, values: &mut [f32], rng: &mut impl Rng) -> Option<f32> {
        let use_cutmix = match (self.mixup > 0.0, self.cutmix > 0.0) {
            (false, false) => return None,
            (true, true) => rng.random_bool(0.5),
            (_, cutmix) => cutmix,
        };
        Some(if use_cutmix {
            let lambda = beta(self.cutmix, rng);
            cutmix(values, lambda, rng)
        } else {
            let lambda = beta(self.mixup, rng) as f32;
            mixup(values, lambda);
            lambda
        })
    }
}

/// Calls `f` with the pixels of image `i` and of its partner `n - 1 - i`, for each pair of the
/// batch's `n` images; an odd batch's middle image is its own partner and is left as it is.
fn each_pair(values: &mut [f32], mut f: impl FnMut(&mut [f32], &mut [f32])) {
    let n = values.len() / PIXELS;
    for i in 0..n / 2 {
        let (head, tail) = values.split_at_mut((n - 1 - i) * PIXELS);
        f(&mut head[i * PIXELS..(i + 1) * PIXELS], &mut tail[..PIXELS]);
    }
}

/// Each image becomes `λ` of itself plus `1 - λ` of its partner.
fn mixup(values: &mut [f32], lambda: f32) {
    each_pair(values, |a, b| {
        for (a, b) in a.iter_mut().zip(b) {
            let (x, y) = (*a, *b);
            *a = lambda * x + (1.0 - lambda) * y;
            *b = lambda * y + (1.0 - lambda) * x;
        }
    });
}

/// Swaps a random rectangle of about `1 - λ` of the image between each image and its partner
/// (the rectangle centred anywhere, cut at the edges, as in the paper); returns the share of each
/// image that is its own.
fn cutmix(values: &mut [f32], lambda: f64, rng: &mut impl Rng) -> f32 {
    let side = SIDE as f64;
    let cut = (1.0 - lambda).sqrt() * side;
    let (cy, cx) = (rng.random_range(0..SIDE), rng.random_range(0..SIDE));
    let span = |centre: usize| {
        let lo = (centre as f64 - cut / 2.0).round().clamp(0.0, side) as usize;
        let hi = (centre as f64 + cut / 2.0).round().clamp(0.0, side) as usize;
        lo..hi
    };
    let (rows, cols) = (span(cy), span(cx));
    each_pair(values, |a, b| {
        for r in rows.clone() {
            let run = r * SIDE + cols.start..r * SIDE + cols.end;
            a[run.clone()].swap_with_slice(&mut b[run]);
        }
    });
    let pasted = rows.len() * cols.len();
    1.0 - pasted as f32 / PIXELS as f32
}

/// A draw of `Beta(α, α)`, as `X / (X + Y)` with `X, Y ~ Gamma(α)`.
fn beta(alpha: f64, rng: &mut impl Rng) -> f64 {
    let (x, y) = (gamma(alpha, rng), gamma(alpha, rng));
    if x + y > 0.0 { x / (x + y) } else { 0.5 }
}

/// A draw of `Gamma(shape, 1)` (Marsaglia and Tsang, 2000; for a shape below 1, `Gamma(shape +
/// 1) * U^(1 / shape)`).
fn gamma(shape: f64, rng: &mut impl Rng) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random();
        return gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// A standard normal draw (Box and Muller).
fn normal(rng: &mut impl Rng) -> f64 {
    let u: f64 = 1.0 - rng.random::<f64>();
    let v: f64 = rng.random();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn beta_draws_have_the_distribution_s_mean_and_variance() {
        let mut rng = StdRng::seed_from_u64(7);
        for alpha in [0.2, 1.0, 2.0] {
            let draws: Vec<f64> = (0..40_000).map(|_| beta(alpha, &mut rng)).collect();
            let mean = draws.iter().sum::<f64>() / draws.len() as f64;
            let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / draws.len() as f64;
            // Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
            let want = 1.0 / (4.0 * (2.0 * alpha + 1.0));
            assert!((mean - 0.5).abs() < 0.01, "alpha {alpha}: mean {mean}");
            assert!(
                (var - want).abs() < 0.05 * want,
                "alpha {alpha}: {var} vs {want}"
            );
            assert!(draws.iter().all(|x| (0.0..=1.0).contains(x)));
        }
    }

    /// Three images of constant values 1, 2, 3.
    fn batch() -> Vec<f32> {
        (1..=3).flat_map(|v| [v as f32; PIXELS]).collect()
    }

    #[test]
    fn mixup_blends_each_image_with_the_batch_reversed() {
        let mut values = batch();
        mixup(&mut values, 0.75);
        assert!(
            values[..PIXELS]
                .iter()
                .all(|&v| v == 0.75 * 1.0 + 0.25 * 3.0)
        );
        assert!(values[PIXELS..2 * PIXELS].iter().all(|&v| v == 2.0));
        assert!(
            values[2 * PIXELS..]
                .iter()
                .all(|&v| v == 0.75 * 3.0 + 0.25 * 1.0)
        );
    }

    #[test]
    fn cutmix_swaps_one_rectangle_and_reports_the_share_left() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let mut values = batch();
            let lambda = cutmix(&mut values, 0.6, &mut rng);
            let first = &values[..PIXELS];
            let pasted = first.iter().filter(|&&v| v == 3.0).count();
            assert_eq!(pasted + first.iter().filter(|&&v| v == 1.0).count(), PIXELS);
            assert_eq!(lambda, 1.0 - pasted as f32 / PIXELS as f32);
            // The pasted pixels form a rectangle, and the partner got the first image's.
            let rows: Vec<usize> = (0..SIDE)
                .filter(|r| first[r * SIDE..(r + 1) * SIDE].contains(&3.0))
                .collect();
            if let (Some(&top), Some(&bottom)) = (rows.first(), rows.last()) {
                let width = pasted / rows.len();
                assert_eq!(rows.len(), bottom - top + 1);
                assert_eq!(width * rows.len(), pasted);
                assert!(width <= 18 && rows.len() <= 18, "{width} x {}", rows.len());
            }
            let last = &values[2 * PIXELS..];
            assert_eq!(last.iter().filter(|&&v| v == 1.0).count(), pasted);
        }
    }
}
