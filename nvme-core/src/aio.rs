//! Futures for I/O commands, for any executor.
//!
//! An [`AsyncQueuePair`] wraps one [`IoQueuePair`] behind a lock and can be cloned into as
//! many tasks as wanted. [`AsyncQueuePair::read`], [`AsyncQueuePair::write`] and friends
//! return an [`IoFuture`]; the command is submitted the first time the future is polled, and
//! the future is ready when its completion arrives, with the buffer back.
//!
//! Doorbells are batched: a future that has just submitted wakes itself and returns
//! `Pending`, and the SQ tail doorbell is written at its next poll (or by any
//! [`AsyncQueuePair::process`]). The executor polls the other ready tasks in between, so the
//! commands they submit share one doorbell write (an MMIO write is a VM exit under
//! virtualization and a PCIe posted write on hardware).
//!
//! Each command slot of the queue has a waker. Completions are processed by whoever gets
//! there first: a future's own poll, or [`AsyncQueuePair::process`] called from an interrupt
//! handler task (the std integration in the `nvme-blk` crate waits on the queue's MSI-X
//! eventfd and calls it); each completion wakes the future of its slot. How a pending future
//! is woken depends on the [`Completion`] mode:
//! - [`Completion::Polled`]: a pending future wakes itself at once, so the executor polls it
//!   again (busy polling, lowest latency, one core per busy queue);
//! - [`Completion::External`]: a pending future only registers its waker; something else
//!   must call [`AsyncQueuePair::process`] when the queue's interrupt fires, and periodically
//!   (deadlines are checked there: see [`IoQueuePair::poll`]).
//!
//! More futures than the queue has slots simply wait for a slot. Dropping a
//! future cancels nothing on the device: its buffer stays with the queue until the command
//! completes, and is freed then. Safety holds as for [`IoQueuePair`]: the transfer length of
//! every command is derived from the command and checked against its buffer at submission.

use alloc::collections::VecDeque;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};

use spin::Mutex;

use crate::dma::DmaBuffer;
use crate::error::{Error, Result};
use crate::hw::Platform;
use crate::io::{IoCompletion, IoError, IoQueuePair};
use crate::namespace::Namespace;
use crate::spec::{Command, NvmOpcode};

/// How pending futures learn that their completion arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// Each poll of a pending future processes the completion queue and, if its command is
    /// still outstanding, wakes the future again at once (busy polling).
    Polled,
    /// Pending futures wait for [`AsyncQueuePair::process`], called by an interrupt handler
    /// (and periodically, for deadlines).
    External,
}

/// What a command slot holds.
enum Slot<P: Platform> {
    Free,
    /// Submitted; the waker of the future waiting for it.
    Pending(Option<Waker>),
    /// Completed, not yet taken by its future.
    Done(IoCompletion<P>),
    /// Submitted, but its future was dropped: the completion is discarded (its buffer freed).
    Abandoned,
}

struct Inner<P: Platform> {
    qp: IoQueuePair<P>,
    slots: Vec<Slot<P>>,
    free: Vec<u32>,
    /// Futures waiting for a free slot.
    waiting: VecDeque<Waker>,
    mode: Completion,
    /// Commands were submitted since the last doorbell write.
    unrung: bool,
}

impl<P: Platform> Inner<P> {
    /// Polls the queue pair; each completion goes to its slot and wakes its future.
    fn process(&mut self) -> Result<usize> {
        self.ring();
        let Self {
            qp,
            slots,
            free,
            waiting,
            ..
        } = self;
        qp.poll(|c| {
            let i = c.tag as usize;
            let Some(slot) = slots.get_mut(i) else {
                // Tags are slot indices given at submission: the core returns them as given.
                return;
            };
            match core::mem::replace(slot, Slot::Free) {
                Slot::Pending(w) => {
                    *slot = Slot::Done(c);
                    if let Some(w) = w {
                        w.wake();
                    }
                }
                Slot::Abandoned => {
                    drop(c);
                    free.push(i as u32);
                    wake_all(waiting);
                }
                other => *slot = other,
            }
        })
    }

    /// Writes the SQ doorbell if commands wait behind it.
    fn ring(&mut self) {
        if self.unrung {
            self.unrung = false;
            self.qp.ring();
        }
    }

    fn release(&mut self, i: u32) {
        self.slots[i as usize] = Slot::Free;
        self.free.push(i);
        wake_all(&mut self.waiting);
    }
}

/// A slot came free: every future waiting for one tries again (one that was dropped while
/// waiting can then not hold the others up).
fn wake_all(waiting: &mut VecDeque<Waker>) {
    for w in waiting.drain(..) {
        w.wake();
    }
}

/// An I/O queue pair shared by futures: clone it into each task.
pub struct AsyncQueuePair<P: Platform> {
    inner: Arc<Mutex<Inner<P>>>,
    qid: u16,
    vector: Option<u16>,
}

impl<P: Platform> Clone for AsyncQueuePair<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            qid: self.qid,
            vector: self.vector,
        }
    }
}

impl<P: Platform> core::fmt::Debug for AsyncQueuePair<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AsyncQueuePair")
            .field("qid", &self.qid)
            .field("vector", &self.vector)
            .finish()
    }
}

/// A finished command: completion DW0 and the buffer given at submission.
#[derive(Debug)]
pub struct Done<P: Platform> {
    /// Completion DW0 (command specific).
    pub dw0: u32,
    /// The buffer, back in the caller's hands.
    pub buffer: Option<DmaBuffer<P>>,
}

impl<P: Platform> AsyncQueuePair<P> {
    /// Wraps `qp`. In [`Completion::External`] mode, call [`AsyncQueuePair::process`] when
    /// the pair's interrupt vector ([`AsyncQueuePair::vector`]) fires.
    ///
    /// ```
    /// # use sim_backend::{Simulator, SimConfig};
    /// # use nvme_core::{Controller, ControllerConfig};
    /// use nvme_core::aio::{AsyncQueuePair, Completion};
    /// # let sim = Simulator::new(SimConfig::default())?;
    /// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
    /// let ns = ctrl.namespace(1)?.clone();
    /// let q = AsyncQueuePair::new(ctrl.create_io_queue_pair(64)?, Completion::Polled);
    /// let buf = ctrl.alloc_buffer(4096)?;
    /// // Any executor drives the future; a minimal one:
    /// let done = block_on(q.read(&ns, 0, buf)?)?;
    /// assert_eq!(done.buffer.unwrap().len(), 4096);
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output {
    /// #     use std::task::{Context, Poll, Wake, Waker};
    /// #     struct W;
    /// #     impl Wake for W { fn wake(self: std::sync::Arc<Self>) {} }
    /// #     let waker = Waker::from(std::sync::Arc::new(W));
    /// #     let mut cx = Context::from_waker(&waker);
    /// #     let mut f = std::pin::pin!(f);
    /// #     loop { if let Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(qp: IoQueuePair<P>, mode: Completion) -> Self {
        let depth = qp.depth();
        let (qid, vector) = (qp.qid(), qp.vector());
        let mut slots = Vec::with_capacity(depth);
        slots.resize_with(depth, || Slot::Free);
        Self {
            inner: Arc::new(Mutex::new(Inner {
                qp,
                slots,
                free: (0..depth as u32).rev().collect(),
                waiting: VecDeque::new(),
                mode,
                unrung: false,
            })),
            qid,
            vector,
        }
    }

    /// The queue ID.
    pub fn qid(&self) -> u16 {
        self.qid
    }

    /// The MSI-X vector of the pair's completion queue (`None`: polled).
    pub fn vector(&self) -> Option<u16> {
        self.vector
    }

    /// The completion mode.
    pub fn mode(&self) -> Completion {
        self.inner.lock().mode
    }

    /// Commands submitted and not yet completed.
    pub fn outstanding(&self) -> usize {
        self.inner.lock().qp.outstanding()
    }

    /// Processes the completions that have arrived (waking their futures) and the deadlines
    /// of the commands outstanding; returns how many completions were delivered. Call it when
    /// the interrupt fires, and periodically (every 100 ms or so) while commands are
    /// outstanding.
    ///
    /// # Errors
    /// As [`IoQueuePair::poll`].
    pub fn process(&self) -> Result<usize> {
        self.inner.lock().process()
    }

    /// Takes the queue pair back (to delete it), if no future and no other clone of this
    /// handle is alive.
    ///
    /// # Errors
    /// The handle itself, if other clones (futures hold one each) are alive.
    pub fn into_inner(self) -> core::result::Result<IoQueuePair<P>, Self> {
        let (qid, vector) = (self.qid, self.vector);
        match Arc::try_unwrap(self.inner) {
            Ok(m) => Ok(m.into_inner().qp),
            Err(inner) => Err(Self { inner, qid, vector }),
        }
    }

    /// A Read (NVM Command Set §3.3.4) of `buffer.len()` bytes (whole blocks) at `slba`.
    ///
    /// # Errors
    /// Checked now, before anything is queued: [`Error::BufferSize`],
    /// [`Error::LbaOutOfRange`], [`Error::StaleNamespace`], [`Error::ForeignObject`] (the
    /// buffer comes back in the error). The future itself fails as
    /// [`IoQueuePair::submit`] and with the command's status.
    pub fn read(
        &self,
        ns: &Namespace,
        slba: u64,
        buffer: DmaBuffer<P>,
    ) -> core::result::Result<IoFuture<P>, IoError<P>> {
        self.data(NvmOpcode::READ, ns, slba, buffer, false)
    }

    /// A Write (NVM Command Set §3.3.6) of `buffer` at `slba`; `fua` sets Force Unit Access.
    ///
    /// # Errors
    /// As [`AsyncQueuePair::read`].
    pub fn write(
        &self,
        ns: &Namespace,
        slba: u64,
        buffer: DmaBuffer<P>,
        fua: bool,
    ) -> core::result::Result<IoFuture<P>, IoError<P>> {
        self.data(NvmOpcode::WRITE, ns, slba, buffer, fua)
    }

    /// A Flush (NVM Command Set §3.3.2) of namespace `nsid`.
    pub fn flush(&self, nsid: u32) -> IoFuture<P> {
        self.command(Command::flush(nsid), None)
    }

    /// Any I/O command the core knows, with its buffer: the transfer length is derived from
    /// the command at submission and must fit the buffer (see [`IoQueuePair::submit`]).
    pub fn command(&self, cmd: Command, buffer: Option<DmaBuffer<P>>) -> IoFuture<P> {
        IoFuture {
            q: self.clone(),
            state: State::Unsubmitted { cmd, buffer },
        }
    }

    fn data(
        &self,
        op: NvmOpcode,
        ns: &Namespace,
        slba: u64,
        buffer: DmaBuffer<P>,
        fua: bool,
    ) -> core::result::Result<IoFuture<P>, IoError<P>> {
        let bpb = ns.bytes_per_block() as usize;
        let len = buffer.len();
        let check = if len == 0 || len % bpb != 0 {
            Err(Error::BufferSize {
                need: len.div_ceil(bpb).max(1) * bpb,
                have: len,
            })
        } else if len / bpb > 1 << 16 {
            Err(Error::InvalidArgument(
                "the number of logical blocks must be 1..=65536 per command",
            ))
        } else {
            self.inner
                .lock()
                .qp
                .check_extent(ns, slba, (len / bpb) as u64)
        };
        if let Err(error) = check {
            return Err(IoError {
                error,
                buffer: Some(buffer),
            });
        }
        let nlb_z = (len / bpb - 1) as u16;
        Ok(self.command(Command::rw(op, ns.nsid(), slba, nlb_z, fua), Some(buffer)))
    }
}

enum State<P: Platform> {
    Unsubmitted {
        cmd: Command,
        buffer: Option<DmaBuffer<P>>,
    },
    Submitted(u32),
    Finished,
}

/// A submitted (or to be submitted) command; resolves to its [`Done`] or its error (with the
/// buffer, unless the command timed out: then it stays with the queue until the device lets
/// go of it).
#[must_use = "a future does nothing until polled"]
pub struct IoFuture<P: Platform> {
    q: AsyncQueuePair<P>,
    state: State<P>,
}

impl<P: Platform> core::fmt::Debug for IoFuture<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self.state {
            State::Unsubmitted { .. } => "unsubmitted",
            State::Submitted(_) => "submitted",
            State::Finished => "finished",
        };
        f.debug_struct("IoFuture")
            .field("qid", &self.q.qid)
            .field("state", &s)
            .finish()
    }
}

// `IoFuture` holds no self-references.
impl<P: Platform> Unpin for IoFuture<P> {}

impl<P: Platform> Future for IoFuture<P> {
    type Output = core::result::Result<Done<P>, IoError<P>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut g = this.q.inner.lock();
        if let State::Unsubmitted { .. } = this.state {
            if g.free.is_empty() {
                // Completions free slots (and abandoned commands give theirs back).
                if let Err(error) = g.process() {
                    return Poll::Ready(Err(IoError {
                        error,
                        buffer: None,
                    }));
                }
            }
            let Some(slot) = g.free.pop() else {
                if g.mode == Completion::Polled {
                    cx.waker().wake_by_ref();
                } else {
                    g.waiting.push_back(cx.waker().clone());
                }
                return Poll::Pending;
            };
            let State::Unsubmitted { cmd, buffer } =
                core::mem::replace(&mut this.state, State::Finished)
            else {
                unreachable!("checked above")
            };
            match g.qp.submit(cmd, buffer, slot as u64) {
                Ok(_) => {
                    // The doorbell is written at this future's next poll (or by any
                    // `process`): the executor first polls the other tasks that are ready,
                    // whose commands then share the doorbell write.
                    g.slots[slot as usize] = Slot::Pending(Some(cx.waker().clone()));
                    this.state = State::Submitted(slot);
                    g.unrung = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Err(IoError {
                    error: Error::QueueFull { .. },
                    buffer,
                }) => {
                    // Slots taken by commands the pair resubmits after a reset: wait.
                    g.free.push(slot);
                    this.state = State::Unsubmitted { cmd, buffer };
                    if g.mode == Completion::Polled {
                        cx.waker().wake_by_ref();
                    } else {
                        g.waiting.push_back(cx.waker().clone());
                    }
                    return Poll::Pending;
                }
                Err(e) => {
                    g.free.push(slot);
                    return Poll::Ready(Err(e));
                }
            }
        }
        let State::Submitted(slot) = this.state else {
            return Poll::Ready(Err(IoError {
                error: Error::InvalidArgument("an IoFuture polled after it completed"),
                buffer: None,
            }));
        };
        if let Err(error) = g.process() {
            return Poll::Ready(Err(IoError {
                error,
                buffer: None,
            }));
        }
        match core::mem::replace(&mut g.slots[slot as usize], Slot::Free) {
            Slot::Done(c) => {
                g.release(slot);
                this.state = State::Finished;
                Poll::Ready(match c.result {
                    Ok(()) => Ok(Done {
                        dw0: c.dw0,
                        buffer: c.buffer,
                    }),
                    Err(error) => Err(IoError {
                        error,
                        buffer: c.buffer,
                    }),
                })
            }
            Slot::Pending(w) => {
                let w = match w {
                    Some(w) if w.will_wake(cx.waker()) => w,
                    _ => cx.waker().clone(),
                };
                if g.mode == Completion::Polled {
                    w.wake_by_ref();
                }
                g.slots[slot as usize] = Slot::Pending(Some(w));
                Poll::Pending
            }
            other => {
                g.slots[slot as usize] = other;
                Poll::Ready(Err(IoError {
                    error: Error::Backend("an I/O future's slot was taken by another command"),
                    buffer: None,
                }))
            }
        }
    }
}

impl<P: Platform> Drop for IoFuture<P> {
    fn drop(&mut self) {
        let State::Submitted(slot) = self.state else {
            return;
        };
        let mut g = self.q.inner.lock();
        // A command still behind the doorbell goes to the device, so that it completes and
        // its slot and buffer come back.
        g.ring();
        match core::mem::replace(&mut g.slots[slot as usize], Slot::Free) {
            // Still on the device: its buffer is freed when the completion comes.
            Slot::Pending(_) => g.slots[slot as usize] = Slot::Abandoned,
            Slot::Done(c) => {
                drop(c);
                g.release(slot);
            }
            other => g.slots[slot as usize] = other,
        }
    }
}
