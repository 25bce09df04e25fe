//! Lookahead (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back"), as the
//! CIFAR-10 airbench recipes use it: the optimiser's ("fast") weights run ahead for `steps`
//! steps, then the slow weights move a fraction `alpha` of the way toward them,
//! `slow = slow + alpha * (fast - slow)`, and training continues from the slow weights. The
//! optimiser's own state (momentum) is kept across synchronisations, as in the paper.

use serde::{Deserialize, Serialize};

use burn::module::Module;

use super::shadow::ShadowWeights;
use crate::error::{Error, Result};
use crate::model::Model;

/// The `[lookahead]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LookaheadConfig {
    /// Optimiser steps between two synchronisations (the paper's k); 0 disables lookahead.
    pub steps: usize,
    /// The fraction of the way the slow weights move toward the fast ones at a synchronisation.
    pub alpha: f64,
}

impl Default for LookaheadConfig {
    /// Off; when on, the paper's `alpha = 0.5`.
    fn default() -> Self {
        LookaheadConfig {
            steps: 0,
            alpha: 0.5,
        }
    }
}

impl LookaheadConfig {
    /// Whether lookahead takes part in training.
    pub fn enabled(&self) -> bool {
        self.steps > 0
    }

    /// Checks the values; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(Error::Config(format!(
                "lookahead.alpha = {}: must be above 0 and at most 1",
                self.alpha
            )));
        }
        Ok(())
    }
}

/// The slow weights and the count of optimiser steps.
#[derive(Debug, Clone)]
pub struct Lookahead {
    config: LookaheadConfig,
    /// Optimiser steps so far.
    pub steps: usize,
    slow: ShadowWeights,
}

impl Lookahead {
    /// Slow weights from `model`, `steps` optimiser steps into the run.
    pub fn new(config: &LookaheadConfig, model: &Model, steps: usize) -> Self {
        Lookahead {
            config: config.clone(),
            steps,
            slow: ShadowWeights::of(model),
        }
    }

    /// Counts an optimiser step that produced `model`; at every `steps`-th, moves the slow
    /// weights toward `model`'s and returns `model` with them (same parameters, same device).
    pub fn step(&mut self, model: Model) -> Model {
        self.steps += 1;
        if !self.steps.is_multiple_of(self.config.steps) {
            return model;
        }
        let alpha = self.config.alpha;
        self.slow.fold(&model, (1.0 - alpha) as f32, alpha as f32);
        self.slow.write_into(model)
    }

    /// `model` (without autodiff) with the slow weights, for checkpoints.
    pub fn slow(&self, model: &Model) -> Model {
        self.slow.write_into(model.valid())
    }
}

#[cfg(test)]
mod tests {
    use burn::prelude::*;

    use super::*;
    use crate::model::ModelConfig;
    use crate::training::shadow::tests::Shift;

    #[test]
    fn synchronises_every_k_steps() {
        let device = Device::flex();
        let start = ModelConfig::linear().init(&device);
        let config = LookaheadConfig {
            steps: 2,
            alpha: 0.5,
        };
        let mut lookahead = Lookahead::new(&config, &start, 0);
        let weights = |m: &Model| ShadowWeights::of(m).values();
        // Step 1: no synchronisation, the fast weights go on.
        let fast = lookahead.step(start.clone().map(&mut Shift(1.0)));
        let want: Vec<f32> = weights(&start).iter().map(|w| w + 1.0).collect();
        assert_eq!(weights(&fast), want);
        // Step 2: slow = slow + 0.5 (fast - slow), and training goes on from it.
        let synced = lookahead.step(fast.map(&mut Shift(1.0)));
        let want: Vec<f32> = weights(&start)
            .iter()
            .map(|&w| w * 0.5 + (w + 1.0 + 1.0) * 0.5)
            .collect();
        assert_eq!(weights(&synced), want);
        assert_eq!(weights(&lookahead.slow(&start)), want);
        assert_eq!(lookahead.steps, 2);
    }

    #[test]
    fn alpha_out_of_range_is_an_error() {
        for alpha in [0.0, -0.5, 1.5, f64::NAN] {
            let err = LookaheadConfig { steps: 5, alpha }.validate();
            let msg = err.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains("lookahead.alpha"), "{alpha}: {msg}");
        }
        assert!(
            LookaheadConfig {
                steps: 5,
                alpha: 1.0
            }
            .validate()
            .is_ok()
        );
    }
}
