//! Unit tests of bring-up against a mocked `Bar` (mockall): register write order (§3.5.1), the CAP.TO
//! deadline when RDY never comes, all-ones CSTS (device gone) and CSTS.CFS.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use crate::hw::{Bar, NoInterrupts, Platform};
use crate::spec::regs::offset;
use crate::testing::{HeapDma, StepClock};
use crate::{Controller, ControllerConfig, Error};
use mockall::{mock, Sequence};

mock! {
    pub Regs {}
    impl Bar for Regs {
        fn size(&self) -> usize;
        fn read32(&self, offset: usize) -> u32;
        unsafe fn write32(&self, offset: usize, value: u32);
    }
}

struct MockPlatform {
    bar: MockRegs,
    dma: HeapDma,
    irq: NoInterrupts,
    clock: StepClock,
}
impl Platform for MockPlatform {
    type Bar = MockRegs;
    type Dma = HeapDma;
    type Irq = NoInterrupts;
    type Clock = StepClock;
    fn bar(&self) -> &MockRegs {
        &self.bar
    }
    fn dma(&self) -> &HeapDma {
        &self.dma
    }
    fn irq(&self) -> &NoInterrupts {
        &self.irq
    }
    fn clock(&self) -> &StepClock {
        &self.clock
    }
    fn name(&self) -> &str {
        "mock"
    }
}

/// CAP with MQES 1023, CQR, TO = 4 (2 s), DSTRD 0, CSS NVM, MPSMIN 0, MPSMAX 4.
const CAP: u64 = 0x0040_0020_0401_03FF;

fn platform(bar: MockRegs) -> Arc<MockPlatform> {
    Arc::new(MockPlatform {
        bar,
        dma: HeapDma::default(),
        irq: NoInterrupts,
        clock: StepClock::default(),
    })
}

fn expect_cap(bar: &mut MockRegs) {
    bar.expect_read32()
        .withf(|o| *o == offset::CAP)
        .return_const(CAP as u32);
    bar.expect_read32()
        .withf(|o| *o == offset::CAP + 4)
        .return_const((CAP >> 32) as u32);
    bar.expect_read32()
        .withf(|o| *o == offset::VS)
        .return_const(0x0002_0000u32);
}

#[test]
fn enable_writes_registers_in_spec_order_and_reports_cfs() {
    let mut bar = MockRegs::new();
    expect_cap(&mut bar);
    let cc = Arc::new(AtomicU64::new(0));
    let c2 = cc.clone();
    bar.expect_read32()
        .withf(|o| *o == offset::CC)
        .returning(move |_| c2.load(Ordering::SeqCst) as u32);
    let c3 = cc.clone();
    // RDY follows EN; CFS appears once EN is 1.
    bar.expect_read32()
        .withf(|o| *o == offset::CSTS)
        .returning(move |_| {
            if c3.load(Ordering::SeqCst) & 1 == 1 {
                0b11
            } else {
                0
            }
        });
    let mut seq = Sequence::new();
    bar.expect_write32()
        .withf(|o, _| *o == offset::AQA)
        .times(1)
        .in_sequence(&mut seq)
        .return_const(());
    bar.expect_write32()
        .withf(|o, v| *o == offset::ASQ && v % 4096 == 0)
        .times(1)
        .in_sequence(&mut seq)
        .return_const(());
    bar.expect_write32()
        .withf(|o, _| *o == offset::ASQ + 4)
        .times(1)
        .in_sequence(&mut seq)
        .return_const(());
    bar.expect_write32()
        .withf(|o, v| *o == offset::ACQ && v % 4096 == 0)
        .times(1)
        .in_sequence(&mut seq)
        .return_const(());
    bar.expect_write32()
        .withf(|o, _| *o == offset::ACQ + 4)
        .times(1)
        .in_sequence(&mut seq)
        .return_const(());
    let c4 = cc.clone();
    bar.expect_write32()
        .withf(|o, v| {
            // EN=1, CSS=000b (NVM only in this CAP), MPS=0, IOSQES=6, IOCQES=4, SHN=0.
            *o == offset::CC && *v == (1 | (6 << 16) | (4 << 20))
        })
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_, v| c4.store(v as u64, Ordering::SeqCst));
    // Teardown after the failure clears EN again.
    let c5 = cc.clone();
    bar.expect_write32()
        .withf(|o, v| *o == offset::CC && v & 1 == 0)
        .returning(move |_, v| c5.store(v as u64, Ordering::SeqCst));
    bar.expect_write32()
        .withf(|o, _| *o == offset::AQA || *o >= offset::ASQ)
        .times(0..)
        .return_const(());
    let p = platform(bar);
    let err = Controller::new(p.clone(), ControllerConfig::default()).unwrap_err();
    assert!(matches!(err, Error::ControllerFatal), "{err:?}");
    // Every DMA region was returned.
    assert!(p.dma.live() == 0);
}

#[test]
fn ready_timeout_honours_cap_to() {
    let mut bar = MockRegs::new();
    expect_cap(&mut bar);
    let cc = Arc::new(AtomicU64::new(0));
    let c2 = cc.clone();
    bar.expect_read32()
        .withf(|o| *o == offset::CC)
        .returning(move |_| c2.load(Ordering::SeqCst) as u32);
    // RDY never rises.
    bar.expect_read32()
        .withf(|o| *o == offset::CSTS)
        .return_const(0u32);
    let c3 = cc.clone();
    bar.expect_write32()
        .withf(|o, _| *o == offset::CC)
        .returning(move |_, v| c3.store(v as u64, Ordering::SeqCst));
    bar.expect_write32().return_const(());
    let p = platform(bar);
    let before = p.clock.0.load(Ordering::SeqCst);
    let err = Controller::new(p.clone(), ControllerConfig::default()).unwrap_err();
    match err {
        Error::ReadyTimeout {
            expected: true,
            waited_ms,
        } => assert_eq!(waited_ms, 2000), // CAP.TO = 4 × 500 ms
        e => panic!("expected ReadyTimeout, got {e:?}"),
    }
    let elapsed_ms = (p.clock.0.load(Ordering::SeqCst) - before) / 1_000_000;
    // The core waited the whole CAP.TO and not much more (each clock read is 1 ms).
    assert!((2000..2600).contains(&elapsed_ms), "waited {elapsed_ms} ms");
}

#[test]
fn all_ones_csts_is_device_gone() {
    let mut bar = MockRegs::new();
    bar.expect_read32()
        .withf(|o| *o == offset::CAP)
        .return_const(u32::MAX);
    bar.expect_read32().return_const(u32::MAX);
    bar.expect_write32().times(0).return_const(());
    let p = platform(bar);
    let err = Controller::new(p, ControllerConfig::default()).unwrap_err();
    assert!(matches!(err, Error::DeviceGone), "{err:?}");
}

#[test]
fn device_vanishing_during_enable_is_device_gone() {
    let mut bar = MockRegs::new();
    expect_cap(&mut bar);
    let gone = Arc::new(AtomicU64::new(0));
    let g2 = gone.clone();
    bar.expect_read32()
        .withf(|o| *o == offset::CC)
        .return_const(0u32);
    bar.expect_read32()
        .withf(|o| *o == offset::CSTS)
        .returning(move |_| {
            if g2.load(Ordering::SeqCst) == 1 {
                u32::MAX
            } else {
                0
            }
        });
    let g3 = gone.clone();
    bar.expect_write32()
        .withf(|o, v| *o == offset::CC && v & 1 == 1)
        .returning(move |_, _| g3.store(1, Ordering::SeqCst));
    bar.expect_write32().return_const(());
    let p = platform(bar);
    let err = Controller::new(p, ControllerConfig::default()).unwrap_err();
    assert!(matches!(err, Error::DeviceGone), "{err:?}");
}

#[test]
fn enabled_controller_is_disabled_first_and_waits_for_rdy() {
    let mut bar = MockRegs::new();
    expect_cap(&mut bar);
    // EN=1 and RDY=0 at start: the core must wait for RDY=1 before clearing EN (never toggle
    // EN while EN != RDY), then wait for RDY=0.
    let cc = Arc::new(AtomicU64::new(1));
    let reads = Arc::new(AtomicU64::new(0));
    let (c2, r2) = (cc.clone(), reads.clone());
    bar.expect_read32()
        .withf(|o| *o == offset::CC)
        .returning(move |_| c2.load(Ordering::SeqCst) as u32);
    let c3 = cc.clone();
    bar.expect_read32()
        .withf(|o| *o == offset::CSTS)
        .returning(move |_| {
            let n = r2.fetch_add(1, Ordering::SeqCst);
            let en = c3.load(Ordering::SeqCst) & 1 == 1;
            // RDY rises on the 5th read while EN=1; after EN=0, RDY drops on the next read; the
            // second enable ends in CFS so the test stops there.
            if en && n >= 4 {
                if n >= 100 {
                    0b11
                } else {
                    1
                }
            } else {
                0
            }
        });
    let order = Arc::new(Mutex::new(Vec::new()));
    let (c4, o2, r3) = (cc.clone(), order.clone(), reads.clone());
    bar.expect_write32()
        .withf(|o, _| *o == offset::CC)
        .returning(move |_, v| {
            o2.lock().unwrap().push((v & 1, r3.load(Ordering::SeqCst)));
            if v & 1 == 1 {
                r3.store(100, Ordering::SeqCst);
            }
            c4.store(v as u64, Ordering::SeqCst);
        });
    bar.expect_write32().return_const(());
    let p = platform(bar);
    let err = Controller::new(p, ControllerConfig::default()).unwrap_err();
    assert!(matches!(err, Error::ControllerFatal), "{err:?}");
    let order = order.lock().unwrap();
    // First CC write clears EN, and only after RDY had risen (at least 5 CSTS reads).
    assert_eq!(order[0].0, 0);
    assert!(
        order[0].1 >= 5,
        "EN cleared while RDY was still 0: {order:?}"
    );
    assert_eq!(order[1].0, 1);
}
