//! Recovery from stuck commands and failed controllers, in the manner of Linux's `nvme`
//! driver and SPDK: I/O timeout → Abort → controller reset → queue pairs re-created →
//! retryable commands resubmitted.
//!
//! # The policy ([`RecoveryPolicy`])
//! 1. A command whose deadline passes is not reported to the caller. Its queue pair asks for
//!    an Abort (NVMe Base §5.1.1) through the controller's mailbox and gives the command
//!    [`RecoveryPolicy::abort_timeout`] more.
//! 2. [`crate::Controller::recover`] (called periodically by the thread that owns the
//!    controller, like SPDK's admin poller) sends the Aborts, at most ACL + 1 at a time
//!    (Identify Controller ACL, §5.1.1). A command the controller aborts completes with
//!    Command Abort Requested (SCT 0h, SC 07h) and is resubmitted while retries remain.
//! 3. If the Abort does not resolve it in time, or the controller reports CSTS.CFS (§9.5), or
//!    an admin command timed out, `recover` resets the controller (§3.7.2).
//! 4. After a reset each queue pair, on its next call, reinitializes its rings, puts its
//!    retryable commands back into its SQ (not yet rung) and declares itself ready; the next
//!    `recover` re-creates its CQ and SQ with the same memory and QID, and only then does the
//!    pair write its doorbell again. (The pair, not the controller, touches its rings, and it
//!    never rings a queue the controller has not re-created for the current reset
//!    generation, so no stale entry can be replayed.)
//! 5. A command is retried at most [`RecoveryPolicy::retries`] times, and never when its
//!    completion had DNR set (§4.2.3: Do Not Retry). Everything else fails with its buffer
//!    back once the device can no longer reach it.
//!
//! Surprise removal (registers read all-ones, §3.1.4) fails every outstanding command with
//! [`crate::Error::DeviceGone`] and hands back no buffer: the device, if it is still there,
//! could write them.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use core::time::Duration;

use crate::dma::Mem;

/// What the driver does when a command times out or the controller fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPolicy {
    /// On an I/O timeout, ask the controller to Abort the command (through
    /// [`crate::Controller::recover`]) instead of reporting the timeout.
    pub abort: bool,
    /// How long an aborted command may take to complete before the controller is reset.
    pub abort_timeout: Duration,
    /// Reset the controller when an Abort does not resolve a timeout, on CSTS.CFS and after
    /// an admin command timed out; queue pairs are re-created afterwards.
    pub reset: bool,
    /// How many times a command is resubmitted (after an Abort or a reset). Never for a
    /// completion with DNR set.
    pub retries: u8,
}

impl RecoveryPolicy {
    /// No recovery: a timeout is reported as [`crate::Error::Timeout`] (the buffer stays with
    /// the queue until the device lets go of it or the controller is reset), and a reset
    /// fails everything outstanding.
    pub const REPORT_ONLY: Self = Self {
        abort: false,
        abort_timeout: Duration::from_secs(10),
        reset: false,
        retries: 0,
    };
}

impl Default for RecoveryPolicy {
    /// Linux's defaults in spirit: abort, then reset, five retries (`nvme_max_retries`); 10 s
    /// for an Abort to take effect.
    fn default() -> Self {
        Self {
            abort: true,
            abort_timeout: Duration::from_secs(10),
            reset: true,
            retries: 5,
        }
    }
}

/// A live queue pair as the controller sees it, to re-create it after a reset.
#[derive(Debug)]
pub(crate) struct PairRecord {
    pub(crate) qid: u16,
    pub(crate) entries: u16,
    pub(crate) sq: Mem,
    pub(crate) cq: Mem,
    pub(crate) vector: Option<u16>,
    /// The reset generation for which the pair has reinitialized its rings (Release by the
    /// pair, Acquire by the controller).
    pub(crate) quiesced: AtomicU32,
    /// The reset generation for which the controller re-created the queues (Release by the
    /// controller, Acquire by the pair before each doorbell).
    pub(crate) ready: AtomicU32,
    /// Re-creating the queues failed: the pair fails everything and stays dead.
    pub(crate) failed: AtomicBool,
}

/// What queue pairs ask of the controller thread.
#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    /// (SQID, CID) of timed-out commands to Abort.
    pub(crate) aborts: spin::Mutex<Vec<(u16, u16)>>,
    /// An Abort did not resolve a timeout, or a pair saw CSTS.CFS: reset.
    pub(crate) reset_needed: AtomicBool,
    /// Live queue pairs.
    pub(crate) pairs: spin::Mutex<Vec<Arc<PairRecord>>>,
}

impl Mailbox {
    pub(crate) fn request_abort(&self, qid: u16, cid: u16) {
        self.aborts.lock().push((qid, cid));
    }
    pub(crate) fn request_reset(&self) {
        // Relaxed: a flag read by the controller thread, which then takes locks of its own.
        self.reset_needed.store(true, Ordering::Relaxed);
    }
}
