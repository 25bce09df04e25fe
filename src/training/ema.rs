//! An exponential moving average of the weights, updated after every optimiser step:
//! `shadow = d * shadow + (1 - d) * weights`, with the decay warmed up as `min(d, (1 + t) / (10 + t))`
//! so that early averages are not dominated by the initial weights.

use burn::module::{ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;

use crate::model::Model;

/// The averaged weights, one flattened tensor per parameter in visiting order.
#[derive(Debug, Clone)]
pub struct Ema {
    decay: f64,
    /// Updates so far.
    pub updates: usize,
    shadow: Vec<Tensor<1>>,
}

struct Collect(Vec<Tensor<1>>);

impl ModuleVisitor for Collect {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push(param.val().flatten(0, D - 1));
    }
}

struct Replace<'a>(std::slice::Iter<'a, Tensor<1>>);

impl ModuleMapper for Replace<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let shadow = self
            .0
            .next()
            .expect("the same parameters in the same order")
            .clone();
        param.map(|t| shadow.reshape(t.dims()))
    }
}

/// The parameters of `model` (without autodiff), flattened.
fn parameters(model: &Model) -> Vec<Tensor<1>> {
    let mut collect = Collect(Vec::new());
    model.valid().visit(&mut collect);
    collect.0
}

impl Ema {
    /// Starts from `model`'s weights.
    pub fn new(decay: f64, model: &Model, updates: usize) -> Self {
        Ema {
            decay,
            updates,
            shadow: parameters(model),
        }
    }

    /// Folds in `model`'s current weights.
    pub fn update(&mut self, model: &Model) {
        let t = self.updates as f64;
        let d = self.decay.min((1.0 + t) / (10.0 + t));
        for (shadow, current) in self.shadow.iter_mut().zip(parameters(model)) {
            *shadow = shadow.clone() * d + current * (1.0 - d);
        }
        self.updates += 1;
    }

    /// `model` (without autodiff) with the averaged weights; batch-norm statistics are the
    /// model's own.
    pub fn apply(&self, model: &Model) -> Model {
        model.valid().map(&mut Replace(self.shadow.iter()))
    }
}
