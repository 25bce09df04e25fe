//! What training changes besides its place in the data: the model, the optimiser's state, and
//! the host copies of the weights that the weight average ([`Ema`]) and [`Lookahead`] keep;
//! with their checkpoint sections.

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::Bytes;

use super::checkpoint::{self, Checkpoint, Position};
use super::config::TrainConfig;
use super::ema::Ema;
use super::lookahead::Lookahead;
use super::run_dir::RunDir;
use super::shadow::ShadowWeights;
use crate::error::{Error, Result};
use crate::model::Model;

/// The model being trained (on an autodiff device) and what its optimiser step updates.
pub struct Learner {
    pub model: Model,
    optimizer: ModuleOptimizer,
    ema: Option<Ema>,
    lookahead: Option<Lookahead>,
}

impl Learner {
    /// A fresh model of `config` on `train_device` (with autodiff), initialised from the
    /// device's random generator on the CPU, and from the CPU's (then copied) on other backends;
    /// its first convolution's leading kernels replaced by `first_filters` when given.
    pub fn new(config: &TrainConfig, train_device: &Device, first_filters: Option<&[f32]>) -> Self {
        let fresh = |device: &Device| {
            let model = config.model.init(device);
            match first_filters {
                Some(filters) => model.with_first_filters(filters),
                None => model,
            }
        };
        let model = if crate::ops::is_flex(train_device) {
            fresh(train_device)
        } else {
            // Drawn on the CPU from the run's seed and copied over, so that a seed starts from
            // the same weights on every backend.
            let host = Device::flex();
            host.seed(config.seed);
            ShadowWeights::of(&fresh(&host)).write_into(config.model.init(train_device))
        };
        Learner {
            ema: (config.ema_decay > 0.0).then(|| Ema::new(config.ema_decay, &model, 0)),
            lookahead: config
                .lookahead
                .enabled()
                .then(|| Lookahead::new(&config.lookahead, &model, 0)),
            optimizer: config.optimizer.init(),
            model,
        }
    }

    /// The learner saved in `checkpoint` (of `run`, with `config`): the model on
    /// `device.autodiff()`, the weight copies on `device`.
    pub fn restore(
        config: &TrainConfig,
        checkpoint: Checkpoint,
        run: &RunDir,
        device: &Device,
    ) -> Result<Self> {
        let wrong_model = |e: String| Error::Run {
            path: run.file(checkpoint::FILE_NAME),
            reason: format!(
                "the checkpoint does not fit this run's model ({e}); it belongs to another run"
            ),
        };
        // A model of this run's configuration on `device`, with the weights of a section.
        let load = |bytes: Vec<u8>, device: &Device| {
            burn::store::ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
                .and_then(|record| config.model.init(device).try_load_record(record))
                .map_err(|e| wrong_model(e.to_string()))
        };
        let position = &checkpoint.position;
        let ema = (config.ema_decay > 0.0)
            .then(|| load(checkpoint.ema, device))
            .transpose()?
            .map(|averaged| Ema::new(config.ema_decay, &averaged, position.ema_updates));
        let lookahead = config
            .lookahead
            .enabled()
            .then(|| load(checkpoint.lookahead, device))
            .transpose()?
            .map(|slow| Lookahead::new(&config.lookahead, &slow, position.lookahead_steps));
        Ok(Learner {
            model: load(checkpoint.model, &device.clone().autodiff())?.train(),
            optimizer: config
                .optimizer
                .init()
                .from_bytes(Bytes::from_bytes_vec(checkpoint.optimizer))
                .map_err(|e| wrong_model(e.to_string()))?,
            ema,
            lookahead,
        })
    }

    /// One optimiser step with `grads` at learning rate `lr`, then lookahead's count (and
    /// synchronisation) and the weight average's update; `position` records their counts. (It
    /// takes the learner by value so that the optimiser updates the only copy of the weights in
    /// place.)
    pub fn step(mut self, lr: f64, grads: GradientsParams, position: &mut Position) -> Self {
        let model = self.optimizer.step(lr, self.model, grads);
        self.model = match &mut self.lookahead {
            Some(lookahead) => {
                let model = lookahead.step(model);
                position.lookahead_steps = lookahead.steps;
                model
            }
            None => model,
        };
        if let Some(ema) = &mut self.ema {
            ema.update(&self.model);
            position.ema_updates = ema.updates;
        }
        self
    }

    /// The model that is evaluated and saved (without autodiff): the weight average when there is
    /// one.
    pub fn evaluated(&self) -> Model {
        match &self.ema {
            Some(ema) => ema.apply(&self.model),
            None => self.model.valid(),
        }
    }

    /// Writes the checkpoint of `run` atomically: this learner at `position`.
    pub fn save_checkpoint(&self, run: &RunDir, position: &Position) -> Result<()> {
        let path = run.file(checkpoint::FILE_NAME);
        let failed = |e: String| Error::io(&path, std::io::Error::other(e));
        let record = |m: Model| {
            m.into_record()
                .into_bytes()
                .map(|b| b.to_vec())
                .map_err(|e| failed(e.to_string()))
        };
        let ema = match &self.ema {
            Some(ema) => record(ema.apply(&self.model))?,
            None => Vec::new(),
        };
        let lookahead = match &self.lookahead {
            Some(lookahead) => record(lookahead.slow(&self.model))?,
            None => Vec::new(),
        };
        Checkpoint {
            position: position.clone(),
            model: record(self.model.valid())?,
            optimizer: self
                .optimizer
                .into_bytes()
                .map_err(|e| failed(e.to_string()))?
                .to_vec(),
            ema,
            lookahead,
        }
        .save(&run.path)
    }
}
