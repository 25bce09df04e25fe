//! An exponential moving average of the weights, updated after every optimiser step:
//! `shadow = d * shadow + (1 - d) * weights`, with the decay warmed up as `min(d, (1 + t) / (10 + t))`
//! so that early averages are not dominated by the initial weights.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use rayon::prelude::*;

use crate::model::Model;
use crate::ops::into_host_values;

/// Parameters at least this long are averaged on every worker thread.
const PARALLEL_MIN_LEN: usize = 1 << 15;

/// The averaged weights, one flattened parameter per entry in visiting order, on the host: an
/// update is one pass over each parameter (Burn's three tensor operations were about 4% of a
/// speedrun epoch), with the same arithmetic.
#[derive(Debug, Clone)]
pub struct Ema {
    decay: f64,
    /// Updates so far.
    pub updates: usize,
    shadow: Vec<Vec<f32>>,
}

struct Collect(Vec<Vec<f32>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(into_host_values(param.val()));
    }
}

/// Folds each visited parameter into its average: `shadow = shadow * d + current * (1 - d)`.
struct Fold<'a> {
    shadow: std::slice::IterMut<'a, Vec<f32>>,
    /// `d` and `1 - d`, rounded to `f32` as Burn's scalar operations round them.
    keep: f32,
    take: f32,
}

impl ModuleVisitor for Fold<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let shadow = self
            .shadow
            .next()
            .expect("the same parameters in the same order");
        let current = into_host_values(param.val());
        let (keep, take) = (self.keep, self.take);
        let fold = |(s, c): (&mut [f32], &[f32])| {
            for (s, &c) in s.iter_mut().zip(c) {
                *s = *s * keep + c * take;
            }
        };
        if shadow.len() >= PARALLEL_MIN_LEN {
            let chunk = shadow.len().div_ceil(rayon::current_num_threads());
            shadow
                .par_chunks_mut(chunk)
                .zip(current.par_chunks(chunk))
                .for_each(fold);
        } else {
            fold((shadow, &current));
        }
    }
}

struct Replace<'a>(std::slice::Iter<'a, Vec<f32>>);

impl ModuleMapper for Replace<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shadow = self
            .0
            .next()
            .expect("the same parameters in the same order")
            .clone();
        param.map(|t| Tensor::from_data(TensorData::new(shadow, t.shape()), &t.device()))
    }
}

impl Ema {
    /// Starts from `model`'s weights.
    pub fn new(decay: f64, model: &Model, updates: usize) -> Self {
        let mut collect = Collect(Vec::new());
        model.visit(&mut collect);
        Ema {
            decay,
            updates,
            shadow: collect.0,
        }
    }

    /// Folds in `model`'s current weights.
    pub fn update(&mut self, model: &Model) {
        let t = self.updates as f64;
        let d = self.decay.min((1.0 + t) / (10.0 + t));
        model.visit(&mut Fold {
            shadow: self.shadow.iter_mut(),
            keep: d as f32,
            take: (1.0 - d) as f32,
        });
        self.updates += 1;
    }

    /// `model` (without autodiff) with the averaged weights; batch-norm statistics are the
    /// model's own.
    pub fn apply(&self, model: &Model) -> Model {
        model.valid().map(&mut Replace(self.shadow.iter()))
    }
}

#[cfg(test)]
mod tests {
    use burn::module::Module;

    use super::*;
    use crate::model::ModelConfig;

    fn weights(model: &Model) -> Vec<f32> {
        let mut collect = Collect(Vec::new());
        model.visit(&mut collect);
        collect.0.concat()
    }

    #[test]
    fn averages_with_the_warmed_up_decay_and_applies_the_average() {
        let device = Device::default();
        let first = ModelConfig::linear().init(&device);
        let second = first.clone().map(&mut Replace(
            [vec![0.5f32; 784 * 10], vec![-1.0f32; 10]].iter(),
        ));
        let mut ema = Ema::new(0.99, &first, 0);
        ema.update(&second);
        // Decay min(0.99, (1 + 0) / (10 + 0)) = 0.1 at the first update.
        let (keep, take) = (0.1f64 as f32, (1.0 - 0.1f64) as f32);
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
