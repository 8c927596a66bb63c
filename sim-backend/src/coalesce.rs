//! Interrupt coalescing as the simulated controller applies it (NVMe Base 2.1 §5.27.1.8
//! "Interrupt Coalescing", §5.27.1.9 "Interrupt Vector Configuration").
//!
//! Feature 08h holds the Aggregation Threshold (THR, bits 7:0, 0's based: completion entries
//! per interrupt) and the Aggregation Time (TIME, bits 15:8, 100 µs units: the longest an
//! interrupt is delayed after the first completion it covers). A vector is signalled when
//! THR + 1 entries have been posted for it since its last interrupt, or TIME after the first
//! of them, whichever comes first. The simulator does not coalesce:
//! - vector 0 (the admin completion queue's; coalescing does not apply to it),
//! - a vector whose Interrupt Vector Configuration has Coalescing Disable (CD) set,
//! - anything while TIME is 0 (no delay) or THR is 0 (one entry per interrupt).

use std::time::{Duration, Instant};

/// Completions not yet signalled, per vector.
#[derive(Debug, Default, Clone)]
pub(crate) struct Coalescer {
    /// Per vector: entries posted since its last interrupt, and when the first was posted.
    held: Vec<(u32, Option<Instant>)>,
    /// Some vector holds entries (its aggregation time is a pending timer).
    any_held: bool,
}

/// THR + 1 and TIME of a feature 08h value, or `None` when it does not coalesce.
fn setting(feature: u32) -> Option<(u32, Duration)> {
    let thr = (feature & 0xFF) + 1;
    let time = Duration::from_micros(u64::from((feature >> 8) & 0xFF) * 100);
    (thr > 1 && !time.is_zero()).then_some((thr, time))
}

/// Whether a feature 08h value coalesces at all (else every completion is signalled at once).
pub(crate) fn coalesces(feature: u32) -> bool {
    setting(feature).is_some()
}

impl Coalescer {
    /// `vectors` MSI-X vectors.
    pub(crate) fn new(vectors: u16) -> Self {
        Self {
            held: vec![(0, None); usize::from(vectors)],
            any_held: false,
        }
    }

    /// Takes the vectors of the completions just posted (`posted`: one entry per completion)
    /// and returns the vectors to signal now, each once.
    pub(crate) fn admit(
        &mut self,
        posted: &[u16],
        feature: u32,
        cd: &[bool],
        now: Instant,
    ) -> Vec<u16> {
        let mut raise: Vec<u16> = Vec::new();
        for &v in posted {
            let exempt = v == 0 || cd.get(usize::from(v)).copied().unwrap_or(true);
            let slot = self.held.get_mut(usize::from(v));
            match (setting(feature), slot) {
                (Some((thr, _)), Some(slot)) if !exempt => {
                    slot.0 += 1;
                    slot.1.get_or_insert(now);
                    self.any_held = true;
                    if slot.0 >= thr {
                        *slot = (0, None);
                        raise.push(v);
                    }
                }
                (_, slot) => {
                    if let Some(s) = slot {
                        *s = (0, None);
                    }
                    raise.push(v);
                }
            }
        }
        raise.sort_unstable();
        raise.dedup();
        raise
    }

    /// The vectors whose aggregation time has run out at `now` (they are signalled now), or
    /// all that hold anything if coalescing was turned off meanwhile.
    pub(crate) fn due(&mut self, feature: u32, now: Instant) -> Vec<u16> {
        let time = setting(feature).map(|(_, t)| t);
        let mut out = Vec::new();
        for (v, slot) in self.held.iter_mut().enumerate() {
            if let (n, Some(first)) = *slot {
                if n > 0 && time.is_none_or(|t| now >= first + t) {
                    *slot = (0, None);
                    out.push(v as u16);
                }
            }
        }
        self.any_held = self.held.iter().any(|s| s.1.is_some());
        out
    }

    /// Whether some vector holds entries back (a timer the controller must service).
    pub(crate) fn holding(&self) -> bool {
        self.any_held
    }

    /// When the next held vector is due.
    pub(crate) fn next_due(&self, feature: u32) -> Option<Instant> {
        let t = setting(feature).map_or(Duration::ZERO, |(_, t)| t);
        self.held
            .iter()
            .filter_map(|&(_, first)| first.map(|f| f + t))
            .min()
    }

    /// Forgets everything held (controller reset).
    pub(crate) fn clear(&mut self) {
        self.held.iter_mut().for_each(|s| *s = (0, None));
        self.any_held = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// THR 3 (four entries), TIME 2 (200 µs).
    const F: u32 = 0x0203;

    #[test]
    fn threshold_and_time() {
        let t0 = Instant::now();
        let cd = vec![false; 4];
        let mut c = Coalescer::new(4);
        assert!(c.admit(&[1, 1, 1], F, &cd, t0).is_empty());
        assert_eq!(c.admit(&[1, 2], F, &cd, t0), vec![1]);
        assert_eq!(c.next_due(F), Some(t0 + Duration::from_micros(200)));
        assert!(c.due(F, t0 + Duration::from_micros(199)).is_empty());
        assert_eq!(c.due(F, t0 + Duration::from_micros(200)), vec![2]);
        assert_eq!(c.next_due(F), None);
        // Vector 0, a vector with CD set, and coalescing off are signalled at once.
        let cd2 = vec![false, false, false, true];
        assert_eq!(c.admit(&[0, 3], F, &cd2, t0), vec![0, 3]);
        assert_eq!(c.admit(&[1], 0x0003, &cd, t0), vec![1]);
        assert_eq!(c.admit(&[1], 0x0200, &cd, t0), vec![1]);
        // Turned off while entries are held: they go at the next service.
        assert!(c.admit(&[2], F, &cd, t0).is_empty());
        assert_eq!(c.due(0, t0), vec![2]);
    }
}
