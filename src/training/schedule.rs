//! Learning-rate schedules. The trainer asks for the rate of every batch ([`ScheduleConfig::lr_at_batch`]):
//! cosine, one-cycle and warm-up move it within an epoch, the others once per epoch.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which schedule to follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    /// The base rate throughout.
    Constant,
    /// The study's schedule: the base rate for epochs `0..hold_epochs`, then multiplied by
    /// `factor` every epoch (Keras `LearningRateScheduler` with `lr * factor` after `hold_epochs`).
    HoldDecay,
    /// Multiplied by `gamma` every `step_size` epochs.
    Step,
    /// Cosine annealing from the base rate to `min_lr` over the run, updated every batch.
    Cosine,
    /// One cycle (Smith): linear rise from `base / 25` to the base rate over the first 30% of
    /// the run, then cosine annealing to `min_lr`, updated every batch.
    OneCycle,
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

    /// Whether the rate changes within an epoch (cosine, one-cycle and warm-up do).
    pub fn per_batch(&self) -> bool {
        matches!(self.name, ScheduleKind::Cosine | ScheduleKind::OneCycle) || self.warmup_epochs > 0
    }

    /// The rate for batch `batch` of `batches` in `epoch`: continuous schedules interpolate
    /// within the epoch, the others keep the epoch's rate.
    pub fn lr_at_batch(
        &self,
        base: f64,
        epoch: usize,
        batch: usize,
        batches: usize,
        epochs: usize,
    ) -> f64 {
        if !self.per_batch() {
            return self.lr_at(base, epoch, epochs);
        }
        self.lr_continuous(
            base,
            epoch as f64 + batch as f64 / batches.max(1) as f64,
            epochs,
        )
    }

    /// A continuous schedule at `t` epochs into the run.
    fn lr_continuous(&self, base: f64, t: f64, epochs: usize) -> f64 {
        let warmup = self.warmup_epochs as f64;
        if t < warmup {
            return base * (t + 1.0 / 1024.0).min(warmup) / warmup;
        }
        let span = (epochs as f64 - warmup).max(1e-9);
        let u = ((t - warmup) / span).clamp(0.0, 1.0);
        let cosine = |from: f64, u: f64| {
            self.min_lr + (from - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * u).cos())
        };
        match self.name {
            ScheduleKind::Cosine => cosine(base, u),
            ScheduleKind::OneCycle => {
                const RISE: f64 = 0.3;
                if u < RISE {
                    base / 25.0 + (base - base / 25.0) * u / RISE
                } else {
                    cosine(base, (u - RISE) / (1.0 - RISE))
                }
            }
            _ => self.lr_at(base, t as usize, epochs),
        }
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
            ScheduleKind::Cosine | ScheduleKind::OneCycle => {
                self.lr_continuous(base, epoch as f64, span + self.warmup_epochs)
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
        // Within an epoch the cosine keeps falling: halfway through epoch 7 of 2 + 10.
        let mid = cos.lr_at_batch(1.0, 7, 50, 100, 12);
        assert!((mid - 0.5 * (1.0 + (std::f64::consts::PI * 0.55).cos())).abs() < 1e-12);
        let one = ScheduleConfig {
            name: ScheduleKind::OneCycle,
            ..Default::default()
        };
        assert!((one.lr_at_batch(1.0, 0, 0, 10, 10) - 0.04).abs() < 1e-12);
        assert!((one.lr_at_batch(1.0, 3, 0, 10, 10) - 1.0).abs() < 1e-12);
        assert!(one.lr_at_batch(1.0, 9, 9, 10, 10) < 0.01);
    }
}
