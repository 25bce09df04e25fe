//! Learning-rate schedules, applied once per epoch.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which schedule to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// The base rate throughout.
    Constant,
    /// The study's schedule: the base rate for epochs `0..hold_epochs`, then multiplied by
    /// `factor` every epoch (Keras `LearningRateScheduler` with `lr * factor` after `hold_epochs`).
    HoldDecay,
    /// Multiplied by `gamma` every `step_size` epochs.
    Step,
    /// Cosine annealing from the base rate to `min_lr` over the run.
    Cosine,
}

/// The `[schedule]` table. Keys that do not apply to the chosen schedule are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    pub name: ScheduleKind,
    /// Hold-decay: epochs at the base rate before decay starts.
    pub hold_epochs: usize,
    /// Hold-decay: multiplier applied every epoch after the hold.
    pub factor: f64,
    /// Step: epochs between multiplications.
    pub step_size: usize,
    /// Step: multiplier.
    pub gamma: f64,
    /// Cosine: final learning rate.
    pub min_lr: f64,
    /// Linear warm-up from `base / warmup_epochs` to the base rate over the first epochs; the
    /// schedule itself starts after it.
    pub warmup_epochs: usize,
}

impl Default for ScheduleConfig {
    /// The study's MLP schedule: hold 30 epochs, then x0.98 per epoch.
    fn default() -> Self {
        ScheduleConfig {
            name: ScheduleKind::HoldDecay,
            hold_epochs: 30,
            factor: 0.98,
            step_size: 10,
            gamma: 0.1,
            min_lr: 0.0,
            warmup_epochs: 0,
        }
    }
}

impl ScheduleConfig {
    /// A constant rate.
    pub fn constant() -> Self {
        ScheduleConfig {
            name: ScheduleKind::Constant,
            ..Default::default()
        }
    }

    /// Checks value ranges; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, value: f64, rule: &str| {
            Err(Error::Config(format!("schedule.{key} = {value}: {rule}")))
        };
        if !(self.factor.is_finite() && self.factor > 0.0) {
            return bad("factor", self.factor, "must be a positive number");
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return bad("gamma", self.gamma, "must be a positive number");
        }
        if self.step_size == 0 {
            return bad("step_size", 0.0, "must be at least 1");
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return bad("min_lr", self.min_lr, "must be 0 or positive");
        }
        Ok(())
    }

    /// The learning rate for `epoch` (0-based) of a run of `epochs` epochs with base rate `base`.
    pub fn lr_at(&self, base: f64, epoch: usize, epochs: usize) -> f64 {
        if epoch < self.warmup_epochs {
            return base * (epoch + 1) as f64 / self.warmup_epochs as f64;
        }
        let e = epoch - self.warmup_epochs;
        let span = epochs.saturating_sub(self.warmup_epochs).max(1);
        match self.name {
            ScheduleKind::Constant => base,
            ScheduleKind::HoldDecay => {
                let decays = (e + 1).saturating_sub(self.hold_epochs);
                base * self.factor.powi(decays as i32)
            }
            ScheduleKind::Step => base * self.gamma.powi((e / self.step_size) as i32),
            ScheduleKind::Cosine => {
                let t = e as f64 / span as f64;
                self.min_lr + (base - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn study_linear_schedule() {
        let s = ScheduleConfig {
            hold_epochs: 150,
            factor: 0.9875,
            ..Default::default()
        };
        let lr = |e| s.lr_at(0.05, e, 300);
        assert_eq!(lr(0), 0.05);
        assert_eq!(lr(149), 0.05);
        assert!((lr(150) - 0.05 * 0.9875).abs() < 1e-15);
        assert!((lr(151) - 0.05 * 0.9875 * 0.9875).abs() < 1e-15);
        assert!((lr(299) - 0.05 * 0.9875f64.powi(150)).abs() < 1e-15);
    }

    #[test]
    fn step_cosine_warmup() {
        let step = ScheduleConfig {
            name: ScheduleKind::Step,
            step_size: 10,
            gamma: 0.5,
            ..Default::default()
        };
        assert_eq!(step.lr_at(1.0, 9, 30), 1.0);
        assert_eq!(step.lr_at(1.0, 10, 30), 0.5);
        assert_eq!(step.lr_at(1.0, 25, 30), 0.25);
        let cos = ScheduleConfig {
            name: ScheduleKind::Cosine,
            warmup_epochs: 2,
            ..Default::default()
        };
        assert_eq!(cos.lr_at(1.0, 0, 12), 0.5);
        assert_eq!(cos.lr_at(1.0, 1, 12), 1.0);
        assert_eq!(cos.lr_at(1.0, 2, 12), 1.0);
        assert!((cos.lr_at(1.0, 7, 12) - 0.5).abs() < 1e-12);
    }
}
