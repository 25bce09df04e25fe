//! Training: configuration ([`config`]), optimisers ([`optimizer`]; one-pass SGD and Adam in
//! [`sgd`] and [`adam`]), knowledge [`distill`]ation, weight averaging ([`ema`]) and [`lookahead`] on host copies of the
//! weights ([`shadow`]), learning-rate schedules
//! ([`schedule`]), what a step updates ([`learner`]), the loop itself ([`trainer`]), its console output ([`progress`]), per-epoch
//! history ([`history`]) and run directories ([`run_dir`]).

pub mod adam;
pub mod checkpoint;
pub mod config;
pub mod distill;
pub mod ema;
pub mod history;
pub mod learner;
pub mod lookahead;
pub mod optimizer;
pub mod progress;
pub mod run_dir;
pub mod schedule;
pub mod settings;
pub mod sgd;
pub mod shadow;
pub mod trainer;

pub use config::TrainConfig;
pub use history::{EpochRecord, History};
pub use run_dir::{RunDir, RunResult, Weights};
pub use trainer::{NanPolicy, Reporter, TrainOptions, resume, train, train_with};
