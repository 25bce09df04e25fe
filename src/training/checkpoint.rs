//! Checkpoints: everything needed to continue a run exactly where it stopped (model, optimiser
//! state, position in the schedule and in the epoch, running metrics, history, early-stopping
//! state) in one file, `checkpoint.ckpt`, replaced atomically, so a crash at any instant leaves the
//! previous complete checkpoint or the new one.
//!
//! Layout: `FMNISTCK` | version u32 | five sections, each a u64 length then bytes (JSON state,
//! model burnpack, optimiser record, averaged-weights burnpack or nothing, lookahead's
//! slow-weights burnpack or nothing) | SHA-256 of all preceding bytes. Version 2, without the
//! last section, still reads.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::history::History;
use crate::error::{Error, Result};
use crate::fsio;

const MAGIC: &[u8; 8] = b"FMNISTCK";
const VERSION: u32 = 3;
const SECTIONS: usize = 5;
/// The previous format, written before lookahead existed: the same without its section.
const VERSION_2: u32 = 2;
/// File name inside a run directory.
pub const FILE_NAME: &str = "checkpoint.ckpt";

/// Where training stands, and what it has accumulated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Position {
    /// The epoch in progress (0-based).
    pub epoch: usize,
    /// Batches of that epoch already trained.
    pub batch: usize,
    /// Running sums of the epoch in progress.
    pub loss_sum: f64,
    pub correct: i64,
    pub seen: usize,
    /// Training seconds spent in the epoch in progress so far.
    pub epoch_seconds: f64,
    /// Wall seconds of the run before this process.
    pub elapsed_seconds: f64,
    /// Completed epochs.
    pub history: History,
    /// Early stopping: the best validation loss seen and epochs since it.
    pub stop_best: Option<f64>,
    pub stop_wait: usize,
    /// Batches skipped because their loss was not finite.
    pub skipped_batches: usize,
    /// Set once the run has ended (all epochs, or early stopping).
    pub finished: bool,
    /// Updates folded into the weight average so far.
    pub ema_updates: usize,
    /// Optimiser steps counted by lookahead so far.
    #[serde(default)]
    pub lookahead_steps: usize,
}

/// A checkpoint in memory.
pub struct Checkpoint {
    pub position: Position,
    pub model: Vec<u8>,
    pub optimizer: Vec<u8>,
    /// The averaged weights (empty without a weight average).
    pub ema: Vec<u8>,
    /// Lookahead's slow weights (empty without lookahead).
    pub lookahead: Vec<u8>,
}

impl Checkpoint {
    /// Serialises the checkpoint with its checksum.
    pub fn to_bytes(&self) -> Vec<u8> {
        let state = serde_json::to_vec(&self.position).expect("a position always serialises");
        let mut out =
            Vec::with_capacity(64 + state.len() + self.model.len() + self.optimizer.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        for section in [
            &state[..],
            &self.model[..],
            &self.optimizer[..],
            &self.ema[..],
            &self.lookahead[..],
        ] {
            out.extend_from_slice(&(section.len() as u64).to_le_bytes());
            out.extend_from_slice(section);
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// Parses and checks a checkpoint; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self> {
        let damaged = |why: &str| Error::Run {
            path: path.to_path_buf(),
            reason: format!(
                "the checkpoint is damaged ({why}); start the run again with --overwrite"
            ),
        };
        if bytes.len() < 12 + 32 || &bytes[..8] != MAGIC {
            return Err(damaged("not an fmnist checkpoint"));
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != digest {
            return Err(damaged("checksum mismatch"));
        }
        let version = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
        let count = match version {
            VERSION => SECTIONS,
            VERSION_2 => SECTIONS - 1,
            _ => {
                return Err(damaged(&format!(
                    "format version {version}, expected {VERSION}"
                )));
            }
        };
        let mut at = 12;
        let mut sections = Vec::new();
        for _ in 0..count {
            let mut len_bytes = [0u8; 8];
            len_bytes.copy_from_slice(body.get(at..at + 8).ok_or_else(|| damaged("truncated"))?);
            let len = u64::from_le_bytes(len_bytes) as usize;
            at += 8;
            let section = body.get(at..at + len).ok_or_else(|| damaged("truncated"))?;
            sections.push(section.to_vec());
            at += len;
        }
        let position: Position = serde_json::from_slice(&sections[0])
            .map_err(|e| damaged(&format!("bad state: {e}")))?;
        sections.resize(SECTIONS, Vec::new());
        let [_, model, optimizer, ema, lookahead]: [Vec<u8>; SECTIONS] = sections
            .try_into()
            .map_err(|_| damaged("missing sections"))?;
        Ok(Checkpoint {
            position,
            model,
            optimizer,
            ema,
            lookahead,
        })
    }

    /// Writes the checkpoint into `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        fsio::write_atomic(&dir.join(FILE_NAME), &self.to_bytes())
    }

    /// Reads the checkpoint of `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE_NAME);
        if !path.is_file() {
            return Err(Error::Run {
                path,
                reason:
                    "no checkpoint: the run stopped before its first checkpoint; start it again \
                         with --overwrite"
                        .into(),
            });
        }
        let bytes = fsio::read(&path)?;
        Self::from_bytes(&path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() -> Result<(), Box<dyn std::error::Error>> {
        let ck = Checkpoint {
            position: Position {
                epoch: 3,
                batch: 7,
                loss_sum: 1.5,
                ..Default::default()
            },
            model: vec![1, 2, 3],
            optimizer: vec![9; 100],
            ema: vec![],
            lookahead: vec![4, 5],
        };
        let bytes = ck.to_bytes();
        let back = Checkpoint::from_bytes(Path::new("c"), &bytes)?;
        assert_eq!(back.position, ck.position);
        assert_eq!(back.model, ck.model);
        assert_eq!(back.optimizer, ck.optimizer);
        assert_eq!(back.lookahead, ck.lookahead);
        let mut bad = bytes.clone();
        bad[30] ^= 1;
        let err = Checkpoint::from_bytes(Path::new("c"), &bad)
            .err()
            .ok_or("expected an error")?
            .to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        let err = Checkpoint::from_bytes(Path::new("c"), &bytes[..bytes.len() - 5])
            .err()
            .ok_or("expected an error")?
            .to_string();
        assert!(err.contains("damaged"), "{err}");
        let err = Checkpoint::from_bytes(
            Path::new("c"),
            b"hello world, this is not a checkpoint at all....",
        )
        .err()
        .ok_or("expected an error")?
        .to_string();
        assert!(err.contains("not an fmnist checkpoint"), "{err}");
        Ok(())
    }

    /// A checkpoint of the format before lookahead: four sections, a state without its count.
    #[test]
    fn version_2_still_reads() -> Result<(), Box<dyn std::error::Error>> {
        let mut state = serde_json::to_value(Position {
            epoch: 47,
            batch: 212,
            ema_updates: 22_000,
            ..Default::default()
        })?;
        state
            .as_object_mut()
            .ok_or("a position is an object")?
            .remove("lookahead_steps");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&VERSION_2.to_le_bytes());
        for section in [serde_json::to_vec(&state)?, vec![1], vec![2], vec![3]] {
            bytes.extend_from_slice(&(section.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&section);
        }
        let digest = Sha256::digest(&bytes);
        bytes.extend_from_slice(&digest);
        let back = Checkpoint::from_bytes(Path::new("c"), &bytes)?;
        assert_eq!((back.position.epoch, back.position.batch), (47, 212));
        assert_eq!(back.position.lookahead_steps, 0);
        assert_eq!(
            (back.model, back.optimizer, back.ema),
            (vec![1], vec![2], vec![3])
        );
        assert!(back.lookahead.is_empty());
        Ok(())
    }
}
