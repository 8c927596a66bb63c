//! The core's I/O futures ([`nvme_core::aio`]) under tokio: a completion task per queue pair,
//! woken by the pair's MSI-X vector, never busy polling.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nvme_core::aio::{AsyncQueuePair, Completion};
use nvme_core::hw::{InterruptSource, Platform};
use nvme_core::IoQueuePair;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

/// How often completions are processed when no interrupt arrives: the deadlines of
/// outstanding commands are checked then (see [`nvme_core::IoQueuePair::poll`]).
pub const TICK: Duration = Duration::from_millis(100);

/// What wakes a queue pair's completion task.
pub enum Wakeup<P: Platform> {
    /// The eventfd the pair's MSI-X vector signals (VFIO:
    /// `vfio_backend::VfioIrq::eventfd`), registered with tokio's reactor: the task sleeps in
    /// epoll until the device interrupts. The descriptor must be non-blocking (VFIO's are).
    EventFd(Arc<OwnedFd>),
    /// A thread blocked in [`InterruptSource::wait`] on the pair's vector, for platforms
    /// without a descriptor to poll (the simulator).
    Thread(Arc<P>),
    /// No interrupts: each pending future polls the completion queue and reschedules itself
    /// ([`Completion::Polled`]): lowest latency, one busy core per busy queue.
    Polled,
}

impl<P: Platform> std::fmt::Debug for Wakeup<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Wakeup::EventFd(_) => "EventFd",
            Wakeup::Thread(_) => "Thread",
            Wakeup::Polled => "Polled",
        })
    }
}

/// A queue pair for tokio tasks: clone [`TokioQueue::queue`] into them and `.await` its
/// futures. Dropping it stops the completion task (after the futures of the clones are gone
/// the pair can be taken back with [`TokioQueue::into_inner`]).
///
/// ```
/// # use sim_backend::{Simulator, SimConfig};
/// # use nvme_core::{Controller, ControllerConfig};
/// use nvme_blk::{TokioQueue, Wakeup};
/// # let sim = Simulator::new(SimConfig::threaded())?;
/// # let mut ctrl = Controller::new(sim.platform(), ControllerConfig::default())?;
/// let ns = ctrl.namespace(1)?.clone();
/// let qp = ctrl.create_io_queue_pair(64)?;
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
/// rt.block_on(async {
///     // The simulator's vectors have no descriptor: a thread waits on the vector.
///     let tq = TokioQueue::new(qp, Wakeup::Thread(sim.platform()))?;
///     let mut reads = Vec::new();
///     for lba in 0..32 {
///         let f = tq.queue().read(&ns, lba * 8, ctrl.alloc_buffer(4096)?)?;
///         reads.push(tokio::spawn(f));
///     }
///     for r in reads {
///         r.await??;
///     }
///     Ok::<(), Box<dyn std::error::Error>>(())
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TokioQueue<P: Platform> {
    /// `None` only inside [`TokioQueue::into_inner`].
    queue: Option<AsyncQueuePair<P>>,
    stop: Arc<Stop>,
    task: Option<Task>,
}

impl<P: Platform> std::fmt::Debug for TokioQueue<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioQueue")
            .field("queue", &self.queue())
            .finish()
    }
}

enum Task {
    Tokio(tokio::task::JoinHandle<()>),
    Thread(std::thread::JoinHandle<()>),
}

#[derive(Default)]
struct Stop {
    flag: AtomicBool,
    notify: Notify,
}

struct Fd(Arc<OwnedFd>);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Reads (and so resets) an eventfd's counter; nothing pending is not an error.
fn drain_eventfd(fd: &OwnedFd) {
    let mut v = [0u8; 8];
    // SAFETY: `v` is valid for writes of 8 bytes for the duration of the call; the descriptor
    // is open (owned by the `Arc` the caller holds).
    let _ = unsafe { libc::read(fd.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
}

impl<P: Platform> TokioQueue<P> {
    /// Wraps `qp` and starts its completion task (on the current tokio runtime for
    /// [`Wakeup::EventFd`]; on a thread of its own for [`Wakeup::Thread`]; none for
    /// [`Wakeup::Polled`]).
    ///
    /// # Errors
    /// [`std::io::ErrorKind::InvalidInput`] if the pair has no interrupt vector but a wake-up
    /// by interrupt was asked for; registering the eventfd with the reactor (outside a
    /// runtime, or a descriptor epoll refuses).
    pub fn new(qp: IoQueuePair<P>, wakeup: Wakeup<P>) -> std::io::Result<Self> {
        Self::with_tick(qp, wakeup, TICK)
    }

    /// As [`TokioQueue::new`], processing completions (and deadlines) at least every `tick`
    /// when no interrupt arrives.
    ///
    /// # Errors
    /// As [`TokioQueue::new`].
    pub fn with_tick(
        qp: IoQueuePair<P>,
        wakeup: Wakeup<P>,
        tick: Duration,
    ) -> std::io::Result<Self> {
        let vector = qp.vector();
        let polled = matches!(wakeup, Wakeup::Polled);
        if !polled && vector.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the queue pair has no interrupt vector (the controller runs polled): use Wakeup::Polled",
            ));
        }
        let mode = if polled {
            Completion::Polled
        } else {
            Completion::External
        };
        let queue = AsyncQueuePair::new(qp, mode);
        let stop = Arc::new(Stop::default());
        let task = match wakeup {
            Wakeup::Polled => None,
            Wakeup::EventFd(fd) => {
                // SAFETY: `Fd` holds an `Arc` of the owned descriptor, so it stays open and
                // is not replaced while the `AsyncFd` (which deregisters it on drop) exists.
                let afd = unsafe { AsyncFd::register_with_interest(Fd(fd), Interest::READABLE)? };
                let (q, stop) = (queue.clone(), stop.clone());
                Some(Task::Tokio(tokio::spawn(async move {
                    while !stop.flag.load(Ordering::Acquire) {
                        tokio::select! {
                            r = afd.readable() => {
                                if let Ok(mut guard) = r {
                                    drain_eventfd(&guard.get_inner().0);
                                    guard.clear_ready();
                                }
                            }
                            _ = tokio::time::sleep(tick) => {}
                            _ = stop.notify.notified() => break,
                        }
                        let _ = q.process();
                    }
                })))
            }
            Wakeup::Thread(platform) => {
                let (q, stop) = (queue.clone(), stop.clone());
                let v = vector.unwrap_or(0);
                let t = std::thread::Builder::new()
                    .name(format!("nvme-q{}-irq", queue.qid()))
                    .spawn(move || {
                        while !stop.flag.load(Ordering::Acquire) {
                            platform.irq().wait(v, tick);
                            let _ = q.process();
                        }
                    })?;
                Some(Task::Thread(t))
            }
        };
        Ok(Self {
            queue: Some(queue),
            stop,
            task,
        })
    }

    /// The queue: clone it into tasks and call its `read`, `write`, ... (see
    /// [`AsyncQueuePair`]).
    pub fn queue(&self) -> &AsyncQueuePair<P> {
        match &self.queue {
            Some(q) => q,
            None => unreachable!("the queue leaves only with into_inner, which consumes self"),
        }
    }

    /// Stops the completion task and gives the queue pair back, if no future or clone of
    /// [`TokioQueue::queue`] is alive.
    ///
    /// # Errors
    /// The queue itself if clones are alive (the completion task is stopped either way).
    pub async fn into_inner(mut self) -> Result<IoQueuePair<P>, AsyncQueuePair<P>> {
        self.halt();
        match self.task.take() {
            Some(Task::Tokio(h)) => {
                let _ = h.await;
            }
            Some(Task::Thread(t)) => {
                let _ = tokio::task::spawn_blocking(move || t.join()).await;
            }
            None => {}
        }
        match self.queue.take() {
            Some(q) => q.into_inner(),
            None => unreachable!("the queue leaves only here"),
        }
    }

    fn halt(&self) {
        self.stop.flag.store(true, Ordering::Release);
        self.stop.notify.notify_waiters();
        self.stop.notify.notify_one();
    }
}

impl<P: Platform> Drop for TokioQueue<P> {
    fn drop(&mut self) {
        self.halt();
        // The thread ends within one TICK; it holds only its clone of the queue.
        if let Some(Task::Tokio(h)) = self.task.take() {
            h.abort();
        }
    }
}
