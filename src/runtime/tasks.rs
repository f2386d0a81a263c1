//! Tasks: the futures an executor runs for handlers that answer later (and
//! for work no request waits for), on the core that made them.
//!
//! A task lives in a slab; its key (slot and generation) is all its waker
//! carries, so waking allocates nothing. A wake pushes the key onto this
//! thread's list of woken tasks, which the executor drains every turn and
//! polls each live task once. The generation tells a wake for a finished
//! task from one for the slot's next occupant.
//!
//! A task that answers a request has a deadline. Every deadline is its
//! spawn time plus the same `request_timeout_ms`, so the tasks that have
//! one are kept in a list in spawn order, which is also deadline order:
//! arming, finishing and expiring are O(1), with nothing kept for tasks
//! that finished.
//!
//! Wakes come from the executor's own thread: millrace's operations
//! ([`Io`](super::Io)) complete there. A waker woken on another thread
//! pushes onto that thread's list, where nothing reads it, so futures that
//! wait for other runtimes' events never finish here (their requests run
//! into `request_timeout_ms`).

use std::cell::RefCell;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
use std::time::Instant;

pub use super::future::TaskFuture;

// A task key travels in a waker's data pointer.
const _: () = assert!(usize::BITS == 64, "task keys need 64-bit pointers");

thread_local! {
    /// Keys of the tasks woken on this thread since the executor last looked.
    static WOKEN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// A task's slot and that slot's generation when the task was put there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskKey {
    slot: u32,
    generation: u32,
}

impl TaskKey {
    fn pack(self) -> u64 {
        u64::from(self.generation) << 32 | u64::from(self.slot)
    }

    fn unpack(packed: u64) -> TaskKey {
        TaskKey {
            slot: packed as u32,
            generation: (packed >> 32) as u32,
        }
    }
}

fn waker_for(key: TaskKey) -> Waker {
    let raw = RawWaker::new(key.pack() as usize as *const (), &VTABLE);
    // SAFETY: the vtable's functions treat the data pointer as a plain
    // integer (never dereferenced), so any value is valid for as long as
    // anyone holds it, and they touch nothing but a thread-local list, so
    // calling them from any thread is sound.
    unsafe { Waker::from_raw(raw) }
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_raw, wake_raw, wake_raw, drop_raw);

fn clone_raw(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake_raw(data: *const ()) {
    let packed = data as usize as u64;
    WOKEN.with(|woken| woken.borrow_mut().push(packed));
}

fn drop_raw(_: *const ()) {}

/// What a task produces.
pub enum Job<A> {
    /// The answer to a request: `A` says where it goes.
    Answer(TaskFuture<crate::http::Response>, A),
    /// Work no request waits for.
    Detached(TaskFuture<()>),
}

const NIL: u32 = u32::MAX;

struct Slot<A> {
    generation: u32,
    job: Option<Job<A>>,
    /// When it times out, if it does; then it is in the deadline list.
    deadline: Option<Instant>,
    prev: u32,
    next: u32,
}

/// The tasks of one executor.
pub struct Tasks<A> {
    slots: Vec<Slot<A>>,
    free: Vec<u32>,
    live: usize,
    /// Keys taken off the thread's woken list, to poll this turn.
    ready: Vec<u64>,
    /// The deadline list's ends.
    head: u32,
    tail: u32,
}

/// A task that finished: where its answer goes and the answer, or nothing
/// for a detached one.
pub struct Finished<A> {
    /// The task's key, as [`Tasks::spawn`] gave it.
    pub key: TaskKey,
    /// Where the answer goes and the answer.
    pub answer: Option<(A, crate::http::Response)>,
}

impl<A> Default for Tasks<A> {
    fn default() -> Self {
        Tasks {
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            ready: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }
}

impl<A> Tasks<A> {
    /// Tasks not yet finished.
    pub fn len(&self) -> usize {
        self.live
    }

    /// No task is live.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Add `job`; it is polled at the next [`Tasks::run_ready`]. With a
    /// `deadline`, no earlier than any deadline given before, it is
    /// handed back by [`Tasks::pop_expired`] if it has not finished by then.
    pub fn spawn(&mut self, job: Job<A>, deadline: Option<Instant>) -> TaskKey {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    job: None,
                    deadline: None,
                    prev: NIL,
                    next: NIL,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let entry = &mut self.slots[slot as usize];
        entry.job = Some(job);
        entry.deadline = deadline;
        let key = TaskKey {
            slot,
            generation: entry.generation,
        };
        if deadline.is_some() {
            debug_assert!(
                self.tail == NIL || self.slots[self.tail as usize].deadline <= deadline,
                "deadlines come in order"
            );
            let entry = &mut self.slots[slot as usize];
            entry.prev = self.tail;
            entry.next = NIL;
            match self.tail {
                NIL => self.head = slot,
                tail => self.slots[tail as usize].next = slot,
            }
            self.tail = slot;
        }
        self.live += 1;
        self.ready.push(key.pack());
        key
    }

    /// Drop task `key` unfinished, handing back its job; `None` if it
    /// already finished.
    pub fn cancel(&mut self, key: TaskKey) -> Option<Job<A>> {
        let entry = self.slots.get_mut(key.slot as usize)?;
        if entry.generation != key.generation {
            return None;
        }
        let job = entry.job.take()?;
        self.release(key.slot);
        Some(job)
    }

    /// The task whose deadline passed first, if one has by `now`, taken
    /// out unfinished.
    pub fn pop_expired(&mut self, now: Instant) -> Option<(TaskKey, Job<A>)> {
        let head = self.head;
        let entry = self.slots.get(head as usize)?;
        if entry.deadline.is_none_or(|d| d > now) {
            return None;
        }
        let key = TaskKey {
            slot: head,
            generation: entry.generation,
        };
        self.cancel(key).map(|job| (key, job))
    }

    /// The earliest deadline of a live task.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.slots.get(self.head as usize)?.deadline
    }

    /// Whether any task was woken or spawned and not yet polled.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty() || WOKEN.with(|woken| !woken.borrow().is_empty())
    }

    /// Poll every task woken or spawned since the last call, once each;
    /// hand each one that finished to `finished`. Tasks woken while these
    /// run wait for the next call.
    pub fn run_ready(&mut self, mut finished: impl FnMut(Finished<A>)) {
        WOKEN.with(|woken| self.ready.append(&mut woken.borrow_mut()));
        let mut ready = std::mem::take(&mut self.ready);
        for &packed in &ready {
            let key = TaskKey::unpack(packed);
            let Some(entry) = self.slots.get_mut(key.slot as usize) else {
                continue;
            };
            if entry.generation != key.generation {
                continue;
            }
            let waker = waker_for(key);
            let mut cx = Context::from_waker(&waker);
            let done = match &mut entry.job {
                None => continue,
                Some(Job::Answer(future, _)) => match future.poll(&mut cx) {
                    Poll::Pending => continue,
                    Poll::Ready(response) => Some(response),
                },
                Some(Job::Detached(future)) => match future.poll(&mut cx) {
                    Poll::Pending => continue,
                    Poll::Ready(()) => None,
                },
            };
            let job = entry.job.take().expect("polled above");
            self.release(key.slot);
            let answer = match (job, done) {
                (Job::Answer(_, to), Some(response)) => Some((to, response)),
                _ => None,
            };
            finished(Finished { key, answer });
        }
        ready.clear();
        // Keep the capacity; anything spawned meanwhile stays queued.
        ready.append(&mut self.ready);
        self.ready = ready;
    }

    fn release(&mut self, slot: u32) {
        let entry = &mut self.slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1);
        if entry.deadline.take().is_some() {
            let (prev, next) = (entry.prev, entry.next);
            match prev {
                NIL => self.head = next,
                prev => self.slots[prev as usize].next = next,
            }
            match next {
                NIL => self.tail = prev,
                next => self.slots[next as usize].prev = prev,
            }
        }
        self.free.push(slot);
        self.live -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Response, Status};
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::Pin;
    use std::rc::Rc;

    /// A future that is pending until its flag is set, remembering its waker.
    struct Gate {
        open: Rc<Cell<bool>>,
        waker: Rc<RefCell<Option<Waker>>>,
    }

    impl Future for Gate {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            if self.open.get() {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    type Flag = Rc<Cell<bool>>;
    type KeptWaker = Rc<RefCell<Option<Waker>>>;

    /// A gate, the flag that opens it and where its waker is kept.
    fn gate() -> (Gate, Flag, KeptWaker) {
        let open = Rc::new(Cell::new(false));
        let waker = Rc::new(RefCell::new(None));
        (
            Gate {
                open: Rc::clone(&open),
                waker: Rc::clone(&waker),
            },
            open,
            waker,
        )
    }

    fn drain<A>(tasks: &mut Tasks<A>) -> Vec<Finished<A>> {
        let mut done = Vec::new();
        tasks.run_ready(|f| done.push(f));
        done
    }

    #[test]
    fn a_task_runs_when_spawned_and_again_only_when_woken() {
        let mut tasks: Tasks<u32> = Tasks::default();
        let (gate, open, waker) = gate();
        let polls = Rc::new(Cell::new(0));
        let counted = Rc::clone(&polls);
        tasks.spawn(
            Job::Answer(
                TaskFuture::new(async move {
                    counted.set(counted.get() + 1);
                    gate.await;
                    Response::text(Status::Ok, "done")
                }),
                7,
            ),
            None,
        );
        assert!(drain(&mut tasks).is_empty());
        assert_eq!(polls.get(), 1);
        assert!(!tasks.has_ready(), "nothing woke it");
        open.set(true);
        waker.borrow().as_ref().unwrap().wake_by_ref();
        let done = drain(&mut tasks);
        assert_eq!(done.len(), 1);
        let (to, response) = done.into_iter().next().unwrap().answer.unwrap();
        assert_eq!((to, &*response.body_bytes()), (7, b"done".as_slice()));
        assert!(tasks.is_empty());
    }

    #[test]
    fn a_wake_for_a_finished_task_does_not_reach_the_slots_next_occupant() {
        let mut tasks: Tasks<u32> = Tasks::default();
        let (first, _, stale) = gate();
        let key = tasks.spawn(Job::Detached(TaskFuture::new(first)), None);
        drain(&mut tasks);
        assert!(tasks.cancel(key).is_some());
        assert!(tasks.cancel(key).is_none(), "cancelled once");
        // The slot is reused; the old waker still names it.
        let (second, _, _) = gate();
        let polls = Rc::new(Cell::new(0));
        let counted = Rc::clone(&polls);
        let reused = tasks.spawn(
            Job::Detached(TaskFuture::new(async move {
                counted.set(counted.get() + 1);
                second.await;
            })),
            None,
        );
        assert_eq!(reused.slot, key.slot);
        drain(&mut tasks);
        assert_eq!(polls.get(), 1);
        stale.borrow().as_ref().unwrap().wake_by_ref();
        drain(&mut tasks);
        assert_eq!(polls.get(), 1, "the stale wake polled nothing");
        assert_eq!(tasks.len(), 1);
    }

    #[test]
    fn a_task_woken_while_tasks_run_waits_for_the_next_run() {
        let mut tasks: Tasks<u32> = Tasks::default();
        let (gate, open, waker) = gate();
        tasks.spawn(Job::Detached(TaskFuture::new(gate)), None);
        drain(&mut tasks);
        let waker = waker.borrow().clone().unwrap();
        let flag = Rc::clone(&open);
        // A detached task that wakes the first while it runs.
        tasks.spawn(
            Job::Detached(TaskFuture::new(async move {
                flag.set(true);
                waker.wake();
            })),
            None,
        );
        assert_eq!(drain(&mut tasks).len(), 1, "only the waker ran");
        assert!(tasks.has_ready());
        assert_eq!(drain(&mut tasks).len(), 1);
        assert!(tasks.is_empty());
    }

    #[test]
    fn deadlines_expire_in_order_and_finished_tasks_leave_the_list() {
        let mut tasks: Tasks<u32> = Tasks::default();
        let start = Instant::now();
        let at = |ms| start + std::time::Duration::from_millis(ms);
        let mut keys = Vec::new();
        for (i, ms) in [10, 20, 30].into_iter().enumerate() {
            let (gate, open, waker) = gate();
            let done = Rc::clone(&open);
            keys.push((
                tasks.spawn(
                    Job::Answer(
                        TaskFuture::new(async move {
                            gate.await;
                            Response::text(Status::Ok, "")
                        }),
                        i as u32,
                    ),
                    Some(at(ms)),
                ),
                done,
                waker,
            ));
        }
        drain(&mut tasks);
        assert_eq!(tasks.next_deadline(), Some(at(10)));
        // The middle one finishes: it leaves the list.
        keys[1].1.set(true);
        keys[1].2.borrow().as_ref().unwrap().wake_by_ref();
        assert_eq!(drain(&mut tasks).len(), 1);
        assert!(tasks.pop_expired(at(9)).is_none());
        let (first, job) = tasks.pop_expired(at(25)).unwrap();
        assert_eq!(first, keys[0].0);
        assert!(matches!(job, Job::Answer(_, 0)));
        assert!(
            tasks.pop_expired(at(25)).is_none(),
            "the finished one is gone"
        );
        assert_eq!(tasks.next_deadline(), Some(at(30)));
        let (third, _) = tasks.pop_expired(at(30)).unwrap();
        assert_eq!(third, keys[2].0);
        assert!(tasks.is_empty());
        assert_eq!(tasks.next_deadline(), None);
    }
}
