//! Optimiser configuration, with Keras's defaults where Burn's differ (SGD momentum without
//! dampening, Adam epsilon 1e-7, RMSprop without momentum).

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamWConfig, ModuleOptimizer, RmsPropConfig};
use serde::{Deserialize, Serialize};

use super::adam::Adam;
use super::sgd::Sgd;
use crate::error::{Error, Result};

/// Which update rule to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
    Adamw,
    Rmsprop,
}

/// The `[optimizer]` table. Keys that do not apply to the chosen optimiser are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    pub name: OptimizerKind,
    /// Base learning rate; the schedule scales it per epoch.
    pub lr: f64,
    /// SGD and RMSprop momentum.
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// L2 penalty added to the gradient (SGD, Adam, RMSprop) or decoupled decay (AdamW).
    pub weight_decay: f64,
    /// Adam/AdamW first-moment decay.
    pub beta1: f64,
    /// Adam/AdamW second-moment decay.
    pub beta2: f64,
    /// Adam/AdamW/RMSprop epsilon (Keras: 1e-7).
    pub epsilon: f64,
    /// RMSprop decay of the squared-gradient average (Keras: 0.9).
    pub rho: f64,
}

impl Default for OptimizerConfig {
    /// The study's optimiser: SGD, learning rate 0.05, momentum 0.95.
    fn default() -> Self {
        OptimizerConfig {
            name: OptimizerKind::Sgd,
            lr: 0.05,
            momentum: 0.95,
            nesterov: false,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-7,
            rho: 0.9,
        }
    }
}

impl OptimizerConfig {
    /// Checks value ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, key: &str, value: f64, rule: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::Config(format!("optimizer.{key} = {value}: {rule}")))
            }
        };
        check(
            self.lr.is_finite() && self.lr > 0.0,
            "lr",
            self.lr,
            "must be a positive number",
        )?;
        check(
            (0.0..1.0).contains(&self.momentum),
            "momentum",
            self.momentum,
            "must be at least 0 and below 1",
        )?;
        check(
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "weight_decay",
            self.weight_decay,
            "must be 0 or positive",
        )?;
        for (key, value) in [
            ("beta1", self.beta1),
            ("beta2", self.beta2),
            ("rho", self.rho),
        ] {
            check(
                (0.0..1.0).contains(&value),
                key,
                value,
                "must be at least 0 and below 1",
            )?;
        }
        check(
            self.epsilon > 0.0,
            "epsilon",
            self.epsilon,
            "must be positive",
        )
    }

    /// Builds the optimiser: fmnist's one-pass [`Sgd`] and [`Adam`] (Burn's arithmetic), Burn's
    /// for the others.
    pub fn init(&self) -> ModuleOptimizer {
        let decay =
            (self.weight_decay > 0.0).then(|| WeightDecayConfig::new(self.weight_decay as f32));
        match self.name {
            OptimizerKind::Sgd => ModuleOptimizer::from(Sgd {
                momentum: self.momentum,
                dampening: 0.0,
                nesterov: self.nesterov,
                weight_decay: self.weight_decay as f32,
            }),
            OptimizerKind::Adam => ModuleOptimizer::from(Adam::new(
                self.beta1 as f32,
                self.beta2 as f32,
                self.epsilon as f32,
                self.weight_decay as f32,
            )),
            OptimizerKind::Adamw => AdamWConfig::new()
                .with_beta_1(self.beta1 as f32)
                .with_beta_2(self.beta2 as f32)
                .with_epsilon(self.epsilon as f32)
                .with_weight_decay(self.weight_decay as f32)
                .init(),
            OptimizerKind::Rmsprop => RmsPropConfig::new()
                .with_alpha(self.rho as f32)
                .with_momentum(self.momentum as f32)
                .with_epsilon(self.epsilon as f32)
                .with_weight_decay(decay)
                .init(),
        }
    }
}
