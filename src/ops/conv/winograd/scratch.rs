//! A worker's scratch for the Winograd convolutions, and the spare ones each thread keeps between
//! calls: allocating and zeroing them anew for every convolution (several MB each, once per rayon
//! task) cost a tenth of a ResNet training step in `calloc`'s `memset` and the kernel's page
//! clearing (docs/performance.md).

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};

use super::{ConvShape, POS, Products, bf16, group_size, tiles};

/// A worker's scratch: the products' [`Work`] and a group of output planes (the pooled forward's
/// convolution, the backward pass's output gradient), apart so that both can be borrowed at once.
pub(super) struct Scratch {
    pub(super) work: Work,
    /// `group × out × oh × ow` values.
    pub(super) images: Vec<f32>,
}

/// A group's transforms and products: the zero-padded planes of two channels (whose borders the
/// input transforms never write), the transformed tiles and the output transform's sums, and the
/// bfloat16 operands.
pub(super) struct Work {
    pub(super) plane: Vec<f32>,
    pub(super) sums: Vec<f32>,
    /// `V[k][c][t]`: `16 × in × tiles` (rows of [`Products::stride`] tiles).
    pub(super) v: Vec<f32>,
    /// `M[k][o][t]` (or `dM`): `16 × out × tiles`.
    pub(super) m: Vec<f32>,
    /// The bfloat16 products' operands (empty where the products are `f32`).
    pub(super) bf16: bf16::Operands,
}

/// What makes two convolutions' scratch interchangeable: the same sizes, group and precision (the
/// batch only through the group's tiles). Everything a call relies on in a scratch (the planes'
/// zero borders, the operands' cleared padding) depends only on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    /// The convolution's shape with the batch set to 0.
    shape: ConvShape,
    tiles: usize,
    bf16: bool,
}

/// The bytes of spare scratch a thread keeps, the most recently returned last (the oldest go
/// first beyond that). The `best` ResNet's five shapes take about 40 MB per thread; a wider
/// network keeps its largest shapes.
const SPARE_BYTES_PER_THREAD: usize = 64 << 20;

thread_local! {
    static SPARES: RefCell<Vec<(Key, Scratch)>> = const { RefCell::new(Vec::new()) };
}

impl Scratch {
    fn new(s: &ConvShape, products: &Products) -> Self {
        let (th, tw) = tiles(s);
        let t = group_size(s) * th * tw;
        let stride = products.stride(t);
        let work = Work {
            plane: vec![0f32; 2 * (2 * th + 2) * (2 * tw + 2)],
            sums: vec![0f32; 8 * th * tw],
            v: vec![0f32; POS * s.in_channels * stride],
            m: vec![0f32; POS * s.out_channels * stride],
            bf16: match products {
                Products::F32 { .. } => bf16::Operands::new(s, 0),
                Products::Bf16 { .. } => bf16::Operands::new(s, t),
            },
        };
        Scratch {
            work,
            images: vec![0f32; group_size(s) * s.out_image()],
        }
    }

    /// The bytes the buffers hold.
    fn bytes(&self) -> usize {
        let w = &self.work;
        let floats = w.plane.len() + w.sums.len() + w.v.len() + w.m.len() + self.images.len();
        4 * floats + w.bf16.bytes()
    }

    /// A scratch for convolutions of shape `s` with `products`: one of this thread's spares of
    /// that shape, or a new one. It goes back to the spares of the thread that drops it.
    pub(super) fn lend(s: &ConvShape, products: &Products) -> Lent {
        let (th, tw) = tiles(s);
        let key = Key {
            shape: ConvShape { batch: 0, ..*s },
            tiles: group_size(s) * th * tw,
            bf16: matches!(products, Products::Bf16 { .. }),
        };
        let spare = SPARES.with_borrow_mut(|spares| {
            let at = spares.iter().rposition(|(k, _)| *k == key)?;
            Some(spares.remove(at).1)
        });
        let scratch = spare.unwrap_or_else(|| Scratch::new(s, products));
        Lent {
            key,
            scratch: ManuallyDrop::new(scratch),
        }
    }
}

/// A scratch lent by [`Scratch::lend`].
pub(super) struct Lent {
    key: Key,
    /// Moved out only by `drop`.
    scratch: ManuallyDrop<Scratch>,
}

impl Deref for Lent {
    type Target = Scratch;
    fn deref(&self) -> &Scratch {
        &self.scratch
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut Scratch {
        &mut self.scratch
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once, and nothing reads `self.scratch` after this.
        let scratch = unsafe { ManuallyDrop::take(&mut self.scratch) };
        // `try_with`: a thread that is exiting has no spares left to keep it in.
        let _ = SPARES.try_with(|spares| {
            let mut spares = spares.borrow_mut();
            spares.push((self.key, scratch));
            keep_newest(&mut spares, SPARE_BYTES_PER_THREAD);
        });
    }
}

/// Keeps the newest spares (the last) whose bytes fit `budget` together, dropping the older ones;
/// a scratch larger than the budget is not kept at all.
fn keep_newest(spares: &mut Vec<(Key, Scratch)>, budget: usize) {
    let mut kept = 0;
    let fit = spares.iter().rev().take_while(|(_, spare)| {
        kept += spare.bytes();
        kept <= budget
    });
    let older = spares.len() - fit.count();
    spares.drain(..older);
}

#[cfg(test)]
mod tests {
    use super::super::Precision;
    use super::*;

    fn shape(channels: usize) -> ConvShape {
        ConvShape {
            batch: 8,
            in_channels: channels,
            out_channels: channels,
            height: 14,
            width: 14,
            kernel: 3,
            padding: 1,
        }
    }

    /// A scratch given back is lent again for the same shape, not while it is held, and not
    /// for another shape.
    #[test]
    fn a_returned_scratch_is_lent_again_for_its_shape() {
        let s = shape(32);
        let products = Products::new(&s, &vec![0.01; 32 * 32 * 9], Precision::F32);
        let first = Scratch::lend(&s, &products).work.v.as_ptr();
        let again = Scratch::lend(&s, &products);
        assert_eq!(again.work.v.as_ptr(), first);
        let meanwhile = Scratch::lend(&s, &products);
        assert_ne!(meanwhile.work.v.as_ptr(), first);
        drop((again, meanwhile));
        let wider = shape(64);
        let products = Products::new(&wider, &vec![0.01; 64 * 64 * 9], Precision::F32);
        assert_ne!(Scratch::lend(&wider, &products).work.v.as_ptr(), first);
    }

    /// Beyond the budget the oldest spares go first.
    #[test]
    fn the_newest_spares_that_fit_are_kept() {
        let s = shape(32);
        let products = Products::new(&s, &vec![0.01; 32 * 32 * 9], Precision::F32);
        let key = |tiles| Key {
            shape: s,
            tiles,
            bf16: false,
        };
        let mut spares: Vec<_> = (1..=3)
            .map(|n| (key(n), Scratch::new(&s, &products)))
            .collect();
        let each = spares[0].1.bytes();
        keep_newest(&mut spares, 2 * each + each / 2);
        let kept: Vec<_> = spares.iter().map(|(k, _)| k.tiles).collect();
        assert_eq!(kept, [2, 3]);
        keep_newest(&mut spares, each / 2);
        assert!(spares.is_empty());
    }
}
