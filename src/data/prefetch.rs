//! Assembles the next training batch in the gaps of the current step.
//!
//! Between kernels the training loop's other worker threads have nothing to do (they poll for
//! work, see `training::trainer`); [`Prefetcher::help`] gives them a few rows of the next batch
//! to scale at a time, and [`Prefetcher::take`] finishes whatever is left when the loop needs
//! the batch. The batch is the same whoever fills which row.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use burn::prelude::*;

use super::batcher::{Batch, Batcher};
use super::{PIXELS, SIDE, Split};

/// Rows one call of [`Prefetcher::help`] fills: a few microseconds, so that a kernel waiting
/// for the thread is not held up.
const CHUNK_ROWS: usize = 4;

/// The next batch of one split, filled by idle workers.
pub struct Prefetcher<'a> {
    batcher: &'a Batcher,
    split: &'a Split,
    queued: Mutex<Option<Arc<Job>>>,
    /// Whether a job is queued: lets idle workers skip the lock when none is.
    pending: AtomicBool,
}

/// One batch being filled: rows are claimed [`CHUNK_ROWS`] at a time.
struct Job {
    indices: Vec<usize>,
    /// Capacity `indices.len() * PIXELS`; its length is set once every row is written.
    values: Vec<f32>,
    /// Start of `values`' buffer, written through by the claimers of each row.
    base: *mut f32,
    claimed: AtomicUsize,
    done: AtomicUsize,
}

// SAFETY: `base` points into `values`' heap buffer, which lives as long as the job; each row is
// written by the one thread that claimed it (`claimed` hands out disjoint ranges), and `values`
// is only read after `done` shows every row written (acquire/release pairing).
unsafe impl Send for Job {}
// SAFETY: as above.
unsafe impl Sync for Job {}

impl Job {
    fn new(indices: &[usize]) -> Job {
        let mut values = Vec::with_capacity(indices.len() * PIXELS);
        let base = values.as_mut_ptr();
        Job {
            indices: indices.to_vec(),
            values,
            base,
            claimed: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        }
    }

    /// Claims and fills the next few rows; false when every row is already claimed.
    fn fill_some(&self, batcher: &Batcher, split: &Split) -> bool {
        let rows = self.indices.len();
        if self.claimed.load(Ordering::Relaxed) >= rows {
            return false;
        }
        let first = self.claimed.fetch_add(CHUNK_ROWS, Ordering::Relaxed);
        if first >= rows {
            return false;
        }
        let end = (first + CHUNK_ROWS).min(rows);
        for r in first..end {
            // SAFETY: row `r` lies within the buffer's capacity and was claimed by this call
            // alone; nothing reads it before `done` counts it.
            let out =
                unsafe { std::slice::from_raw_parts_mut(self.base.add(r * PIXELS).cast(), PIXELS) };
            batcher.fill_row(split, &self.indices, r, out);
        }
        self.done.fetch_add(end - first, Ordering::Release);
        true
    }

    fn is_complete(&self) -> bool {
        self.done.load(Ordering::Acquire) == self.indices.len()
    }
}

impl<'a> Prefetcher<'a> {
    pub fn new(batcher: &'a Batcher, split: &'a Split) -> Self {
        Prefetcher {
            batcher,
            split,
            queued: Mutex::new(None),
            pending: AtomicBool::new(false),
        }
    }

    fn queued(&self) -> MutexGuard<'_, Option<Arc<Job>>> {
        self.queued.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues the batch of `indices` (replacing any other) for idle workers to fill.
    pub fn queue(&self, indices: &[usize]) {
        *self.queued() = Some(Arc::new(Job::new(indices)));
        self.pending.store(true, Ordering::Release);
    }

    /// For an idle worker: fills a few rows of the queued batch. False when there is nothing to
    /// do, or the queue is busy (a worker never waits here).
    pub fn help(&self) -> bool {
        if !self.pending.load(Ordering::Acquire) {
            return false;
        }
        let job = match self.queued.try_lock() {
            Ok(queued) => queued.clone(),
            Err(_) => return false,
        };
        job.is_some_and(|job| job.fill_some(self.batcher, self.split))
    }

    /// The batch of `indices`: the queued one when it is that batch, a new one otherwise; its
    /// remaining rows are filled here (and by idle workers meanwhile).
    pub fn take(&self, indices: &[usize], device: &Device) -> Batch {
        let mut job = {
            let mut queued = self.queued();
            match queued.as_ref() {
                Some(job) if job.indices == indices => job.clone(),
                _ => {
                    let job = Arc::new(Job::new(indices));
                    *queued = Some(job.clone());
                    self.pending.store(true, Ordering::Release);
                    job
                }
            }
        };
        while job.fill_some(self.batcher, self.split) {}
        while !job.is_complete() {
            std::hint::spin_loop();
        }
        *self.queued() = None;
        self.pending.store(false, Ordering::Release);
        // A worker that cloned the job before it left the queue drops its handle as soon as it
        // finds no row left to claim.
        let mut job = loop {
            match Arc::try_unwrap(job) {
                Ok(job) => break job,
                Err(shared) => {
                    job = shared;
                    std::hint::spin_loop();
                }
            }
        };
        // SAFETY: `is_complete` showed all `indices.len() * PIXELS` values written.
        unsafe { job.values.set_len(job.indices.len() * PIXELS) };
        Batch::new(job.values, SIDE, self.split, &job.indices, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(len: usize) -> Split {
        Split {
            images: (0..len * PIXELS).map(|i| (i * 7 % 251) as u8).collect(),
            labels: (0..len).map(|i| (i % 10) as u8).collect(),
        }
    }

    fn values(batch: &Batch) -> (Vec<f32>, Vec<i64>) {
        let images = batch.images.clone().into_data().try_to_vec::<f32>();
        let targets = batch.targets.clone().into_data().try_to_vec::<i64>();
        (images.unwrap_or_default(), targets.unwrap_or_default())
    }

    #[test]
    fn batches_equal_the_batchers_whoever_fills_them() {
        let (split, batcher, device) = (
            split(300),
            Batcher::new(Default::default(), (0.0, 1.0)),
            Device::flex(),
        );
        let prefetcher = Prefetcher::new(&batcher, &split);
        let first: Vec<usize> = (0..300).rev().step_by(3).collect();
        let second: Vec<usize> = (5..130).collect();
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            // An idle worker helping all along, as in training.
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    prefetcher.help();
                }
            });
            // Nothing queued, then the queued batch, then a batch other than the queued one.
            let taken = prefetcher.take(&first, &device);
            assert_eq!(
                values(&taken),
                values(&batcher.batch(&split, &first, &device))
            );
            prefetcher.queue(&second);
            let taken = prefetcher.take(&second, &device);
            assert_eq!(
                values(&taken),
                values(&batcher.batch(&split, &second, &device))
            );
            prefetcher.queue(&first);
            let taken = prefetcher.take(&second, &device);
            assert_eq!(
                values(&taken),
                values(&batcher.batch(&split, &second, &device))
            );
            stop.store(true, Ordering::Relaxed);
        });
        assert!(
            values(&prefetcher.take(&[7], &device))
                .0
                .iter()
                .any(|&v| v > 0.0)
        );
    }
}
