//! A copy of a model's weights on the host, one flattened parameter per entry in visiting order:
//! the state of the weight average ([`super::ema`]) and of lookahead's slow weights
//! ([`super::lookahead`]). Folding a model in is one pass over each parameter, on every worker
//! thread for the large ones.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use rayon::prelude::*;

use crate::model::Model;
use crate::ops::into_host_values;

/// Parameters at least this long are folded on every worker thread.
const PARALLEL_MIN_LEN: usize = 1 << 15;

/// A model's weights on the host.
#[derive(Debug, Clone)]
pub struct ShadowWeights(Vec<Vec<f32>>);

struct Collect(Vec<Vec<f32>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(into_host_values(param.val()));
    }
}

/// Folds each visited parameter into the shadow: `shadow = shadow * keep + current * take`.
struct Fold<'a> {
    shadow: std::slice::IterMut<'a, Vec<f32>>,
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
        let fold = |(s, c): (&mut [f32], &[f32])| fold_slice(s, c, keep, take);
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

/// `shadow = shadow * keep + current * take`, 16 values at a time where the CPU has AVX-512
/// (the same operations, so the same bits as the baseline build's 4 at a time).
fn fold_slice(shadow: &mut [f32], current: &[f32], keep: f32, take: f32) {
    #[inline(always)]
    fn fold(shadow: &mut [f32], current: &[f32], keep: f32, take: f32) {
        for (s, &c) in shadow.iter_mut().zip(current) {
            *s = *s * keep + c * take;
        }
    }
    crate::ops::amx::vectorised!(fold(shadow, current, keep, take))
}

/// Replaces each parameter's values by the shadow's, on the parameter's device, keeping its
/// identity (so the optimiser's state still belongs to it) and whether it requires gradients.
struct Replace<'a>(std::slice::Iter<'a, Vec<f32>>);

impl ModuleMapper for Replace<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shadow = self
            .0
            .next()
            .expect("the same parameters in the same order")
            .clone();
        param.map(|t| {
            let values = Tensor::from_data(TensorData::new(shadow, t.shape()), &t.device());
            if t.is_require_grad() {
                values.require_grad()
            } else {
                values
            }
        })
    }
}

impl ShadowWeights {
    /// A copy of `model`'s weights.
    pub fn of(model: &Model) -> Self {
        let mut collect = Collect(Vec::new());
        model.visit(&mut collect);
        ShadowWeights(collect.0)
    }

    /// `shadow = shadow * keep + weights * take`, parameter by parameter, with `model`'s weights.
    pub fn fold(&mut self, model: &Model, keep: f32, take: f32) {
        model.visit(&mut Fold {
            shadow: self.0.iter_mut(),
            keep,
            take,
        });
    }

    /// `model` with these weights in place of its own, on its own device (batch-norm statistics
    /// stay the model's).
    pub fn write_into(&self, model: Model) -> Model {
        model.map(&mut Replace(self.0.iter()))
    }

    /// The weights, flattened and concatenated in visiting order.
    pub fn values(&self) -> Vec<f32> {
        self.0.concat()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use burn::optim::GradientsParams;

    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn folds_and_writes_back_keeping_gradients() {
        let device = Device::flex().autodiff();
        let model = ModelConfig::linear().init(&device);
        let start = ShadowWeights::of(&model);
        let mut shadow = start.clone();
        let ones = ShadowWeights(vec![vec![1.0; 784 * 10], vec![1.0; 10]]);
        let moved = ones.write_into(model);
        assert_eq!(ShadowWeights::of(&moved).values(), vec![1.0; 7850]);
        shadow.fold(&moved, 0.25, 0.75);
        let want: Vec<f32> = start.values().iter().map(|s| s * 0.25 + 0.75).collect();
        assert_eq!(shadow.values(), want);
        // The parameters written back still take part in backpropagation.
        let x = Tensor::<4>::ones([2, 1, 28, 28], &device);
        let grads = GradientsParams::from_grads(moved.forward(x).sum().backward(), &moved);
        assert_eq!(grads.len(), 2);
    }

    /// Adds a number to every weight (a stand-in for an optimiser step in tests).
    pub(crate) struct Shift(pub f32);

    impl ModuleMapper for Shift {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            param.map(|t| t.add_scalar(self.0))
        }
    }
}
