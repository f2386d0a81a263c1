//! [`TaskFuture`]: a task's future, kept in a block from its core's pool
//! rather than a fresh heap allocation.
//!
//! A server with a thousand deferred answers in flight allocates and frees
//! a future of several hundred bytes per request. Blocks that size are too
//! many for the C allocator's per-thread cache (seven per size), so each
//! free and allocation took its slow path: profiled on `PUT /v1/kv` at
//! depth 16, the allocator's share of the server's CPU went from 8.6% to
//! 17% when deferred answers became boxed futures. Here, futures up to
//! [`MAX_POOLED_BYTES`] go into blocks of a few sizes taken from, and given
//! back to, free lists kept per thread: the same blocks cycle, and nothing
//! is shared between cores. Larger or over-aligned futures are boxed.
//!
//! A block's future is never moved once written (it is polled in place, as
//! a pinned future must be) and is dropped in place, once.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Block sizes, in bytes: a future takes the smallest that holds it.
const CLASSES: [usize; 6] = [128, 256, 512, 1024, 2048, 4096];

/// The largest future kept in a block; a larger one is boxed.
pub const MAX_POOLED_BYTES: usize = CLASSES[CLASSES.len() - 1];

/// Every block's alignment; a future that needs more is boxed.
const BLOCK_ALIGN: usize = 64;

/// Free blocks kept per size, at most; more are given back to the system,
/// so that a burst does not pin its peak for good.
const MAX_FREE_PER_CLASS: usize = 4096;

/// Per-thread free lists, one per size.
struct Pool {
    free: [Vec<NonNull<u8>>; CLASSES.len()],
}

impl Pool {
    fn layout(class: usize) -> Layout {
        Layout::from_size_align(CLASSES[class], BLOCK_ALIGN).expect("a valid block layout")
    }

    fn take(&mut self, class: usize) -> NonNull<u8> {
        if let Some(block) = self.free[class].pop() {
            return block;
        }
        let layout = Pool::layout(class);
        // SAFETY: the layout's size is not zero.
        let block = unsafe { alloc::alloc(layout) };
        NonNull::new(block).unwrap_or_else(|| alloc::handle_alloc_error(layout))
    }

    fn give_back(&mut self, class: usize, block: NonNull<u8>) {
        if self.free[class].len() < MAX_FREE_PER_CLASS {
            self.free[class].push(block);
        } else {
            // SAFETY: the block was allocated with this class's layout.
            unsafe { alloc::dealloc(block.as_ptr(), Pool::layout(class)) };
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (class, blocks) in self.free.iter_mut().enumerate() {
            for block in blocks.drain(..) {
                // SAFETY: each free block was allocated with its class's
                // layout, and nothing refers to a free block.
                unsafe { alloc::dealloc(block.as_ptr(), Pool::layout(class)) };
            }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        free: Default::default(),
    });
}

/// Where a future lives: a pooled block of size class `class`, or a box.
#[derive(Clone, Copy)]
enum Home {
    Pooled(usize),
    Boxed,
}

/// What a [`TaskFuture`] does with the future it holds, for one type.
struct VTable<T> {
    poll: unsafe fn(NonNull<u8>, &mut Context<'_>) -> Poll<T>,
    drop_in_place: unsafe fn(NonNull<u8>),
    free_box: unsafe fn(NonNull<u8>),
}

/// The table of `F`'s functions.
struct VTableOf<F>(PhantomData<F>);

impl<F: Future> VTableOf<F> {
    const VTABLE: VTable<F::Output> = VTable {
        poll: poll::<F>,
        drop_in_place: drop_in_place::<F>,
        free_box: free_box::<F>,
    };
}

/// # Safety
/// `future` holds a live `F` that has never moved since it was written.
unsafe fn poll<F: Future>(future: NonNull<u8>, cx: &mut Context<'_>) -> Poll<F::Output> {
    // SAFETY: the caller says an `F` lives there, and it stays there until
    // dropped in place, so pinning it is sound.
    let future = unsafe { Pin::new_unchecked(&mut *future.cast::<F>().as_ptr()) };
    future.poll(cx)
}

/// # Safety
/// `future` holds a live `F`, dropped nowhere else.
unsafe fn drop_in_place<F>(future: NonNull<u8>) {
    // SAFETY: as the caller says.
    unsafe { std::ptr::drop_in_place(future.cast::<F>().as_ptr()) };
}

/// # Safety
/// `future` is a `Box<F>`'s allocation whose `F` was dropped in place.
unsafe fn free_box<F>(future: NonNull<u8>) {
    let layout = Layout::new::<F>();
    if layout.size() > 0 {
        // SAFETY: the box allocated it with `F`'s layout.
        unsafe { alloc::dealloc(future.as_ptr(), layout) };
    }
}

/// A future whose output is `T`, pinned in a pooled block (or a box).
/// Not `Send`: it stays on the thread, and with the pool, it came from.
pub struct TaskFuture<T: 'static> {
    future: NonNull<u8>,
    home: Home,
    vtable: &'static VTable<T>,
}

impl<T: 'static> TaskFuture<T> {
    /// Keep `future`: in a block of this thread's pool when it fits.
    pub fn new<F: Future<Output = T> + 'static>(future: F) -> TaskFuture<T> {
        let layout = Layout::new::<F>();
        let class = CLASSES.iter().position(|&size| layout.size() <= size);
        let (block, home) = match class {
            Some(class) if layout.align() <= BLOCK_ALIGN => (
                POOL.with(|pool| pool.borrow_mut().take(class)),
                Home::Pooled(class),
            ),
            _ => {
                let boxed = Box::into_raw(Box::new(future));
                // SAFETY: a box's pointer is never null.
                let block = unsafe { NonNull::new_unchecked(boxed) };
                return TaskFuture {
                    future: block.cast(),
                    home: Home::Boxed,
                    vtable: &VTableOf::<F>::VTABLE,
                };
            }
        };
        // SAFETY: the block is at least `F`'s size and alignment, and free.
        unsafe { block.cast::<F>().as_ptr().write(future) };
        TaskFuture {
            future: block,
            home,
            vtable: &VTableOf::<F>::VTABLE,
        }
    }

    /// Poll the future in place.
    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        // SAFETY: `new` wrote an `F` there; it has not moved and is
        // dropped only by `drop`.
        unsafe { (self.vtable.poll)(self.future, cx) }
    }

    /// Whether it sits in a pooled block (for tests).
    pub fn is_pooled(&self) -> bool {
        matches!(self.home, Home::Pooled(_))
    }
}

impl<T: 'static> Future for TaskFuture<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        TaskFuture::poll(&mut self, cx)
    }
}

impl<T: 'static> Drop for TaskFuture<T> {
    fn drop(&mut self) {
        // SAFETY: the future lives there and this is its only drop.
        unsafe { (self.vtable.drop_in_place)(self.future) };
        match self.home {
            Home::Pooled(class) => {
                // A thread that is exiting may have torn its pool down.
                let _ = POOL.try_with(|pool| pool.borrow_mut().give_back(class, self.future));
            }
            // SAFETY: the box's `F` was just dropped in place.
            Home::Boxed => unsafe { (self.vtable.free_box)(self.future) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;
    use std::task::Waker;

    /// Counts its drops.
    struct Tracked(Rc<Cell<u32>>);

    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    fn poll_once<T>(future: &mut TaskFuture<T>) -> Poll<T> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    /// Pending once, then ready: the future is polled again after it.
    async fn yield_once() {
        let mut yielded = false;
        std::future::poll_fn(|_| {
            if yielded {
                Poll::Ready(())
            } else {
                yielded = true;
                Poll::Pending
            }
        })
        .await
    }

    #[test]
    fn a_pooled_future_runs_in_place_and_drops_once() {
        let drops = Rc::new(Cell::new(0));
        let tracked = Tracked(Rc::clone(&drops));
        let mut future = TaskFuture::new(async move {
            let _held = tracked;
            yield_once().await;
            7
        });
        assert!(future.is_pooled());
        assert!(poll_once(&mut future).is_pending());
        assert_eq!(drops.get(), 0);
        assert_eq!(poll_once(&mut future), Poll::Ready(7));
        assert_eq!(drops.get(), 1, "finishing dropped what it held");
        drop(future);
        assert_eq!(
            drops.get(),
            1,
            "and dropping the finished future drops nothing more"
        );
    }

    #[test]
    fn an_unfinished_future_is_dropped_with_what_it_holds() {
        let drops = Rc::new(Cell::new(0));
        let tracked = Tracked(Rc::clone(&drops));
        let mut future = TaskFuture::new(async move {
            let _held = tracked;
            std::future::pending::<()>().await;
        });
        assert!(poll_once(&mut future).is_pending());
        drop(future);
        assert_eq!(drops.get(), 1);
    }

    #[test]
    fn blocks_are_reused_and_large_or_over_aligned_futures_are_boxed() {
        let first = TaskFuture::new(async { [0u8; 100] });
        let address = first.future;
        drop(first);
        let second = TaskFuture::new(async { [1u8; 90] });
        assert_eq!(second.future, address, "the freed block came back");

        // What a future captures is its size.
        let big = [7u8; MAX_POOLED_BYTES + 1];
        let mut large = TaskFuture::new(async move { big });
        assert!(!large.is_pooled());
        assert!(matches!(poll_once(&mut large), Poll::Ready(a) if a[MAX_POOLED_BYTES] == 7));

        #[repr(align(128))]
        struct Aligned(u8);
        let captured = Aligned(3);
        let mut aligned = TaskFuture::new(async move { captured });
        assert!(!aligned.is_pooled());
        assert!(matches!(poll_once(&mut aligned), Poll::Ready(Aligned(3))));
        // A zero-sized future is fine too.
        let mut empty = TaskFuture::new(std::future::ready(()));
        assert_eq!(poll_once(&mut empty), Poll::Ready(()));
    }

    #[test]
    fn a_self_referential_future_survives_being_polled_in_place() {
        let mut future = TaskFuture::new(async {
            let data = [5u8; 32];
            let borrowed = &data;
            yield_once().await;
            borrowed.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        assert!(poll_once(&mut future).is_pending());
        assert_eq!(poll_once(&mut future), Poll::Ready(160));
    }
}
