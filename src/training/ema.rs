//! An exponential moving average of the weights, updated after every optimiser step:
//! `shadow = d * shadow + (1 - d) * weights`, with the decay warmed up as `min(d, (1 + t) / (10 + t))`
//! so that early averages are not dominated by the initial weights.

use burn::module::Module;

use super::shadow::ShadowWeights;
use crate::model::Model;

/// The averaged weights, on the host: an update is one pass over each parameter (Burn's three
/// tensor operations were about 4% of a speedrun epoch), with the same arithmetic.
#[derive(Debug, Clone)]
pub struct Ema {
    decay: f64,
    /// Updates so far.
    pub updates: usize,
    shadow: ShadowWeights,
}

impl Ema {
    /// Starts from `model`'s weights.
    pub fn new(decay: f64, model: &Model, updates: usize) -> Self {
        Ema {
            decay,
            updates,
            shadow: ShadowWeights::of(model),
        }
    }

    /// Folds in `model`'s current weights.
    pub fn update(&mut self, model: &Model) {
        let t = self.updates as f64;
        let d = self.decay.min((1.0 + t) / (10.0 + t));
        // `d` and `1 - d` rounded to `f32`, as Burn's scalar operations round them.
        self.shadow.fold(model, d as f32, (1.0 - d) as f32);
        self.updates += 1;
    }

    /// `model` (without autodiff) with the averaged weights; batch-norm statistics are the
    /// model's own.
    pub fn apply(&self, model: &Model) -> Model {
        self.shadow.write_into(model.valid())
    }
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use super::*;
    use crate::model::ModelConfig;
    use crate::training::shadow::tests::Shift;

    #[test]
    fn averages_with_the_warmed_up_decay_and_applies_the_average() {
        let device = Device::flex();
        let first = ModelConfig::linear().init(&device);
        let second = first.clone().map(&mut Shift(-1.5));
        let mut ema = Ema::new(0.99, &first, 0);
        ema.update(&second);
        // Decay min(0.99, (1 + 0) / (10 + 0)) = 0.1 at the first update.
        let (keep, take) = (0.1f64 as f32, (1.0 - 0.1f64) as f32);
        let weights = |m: &Model| ShadowWeights::of(m).values();
        let want: Vec<f32> = weights(&first)
            .iter()
            .zip(weights(&second))
            .map(|(&a, b)| a * keep + b * take)
            .collect();
        assert_eq!(weights(&ema.apply(&first)), want);
        assert_eq!(ema.updates, 1);
        assert_ne!(want, weights(&first));
    }
}
