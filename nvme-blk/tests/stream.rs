//! `NamespaceIo` against a model: random seeks, reads and writes at any byte offset and
//! length must leave the namespace exactly as the same operations leave a `Vec<u8>`.

use std::io::{Read, Seek, SeekFrom, Write};

use nvme_blk::NamespaceIo;
use nvme_core::{Controller, ControllerConfig};
use sim_backend::{NamespaceConfig, SimConfig, Simulator};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn sim(lba: u32, bytes: u64) -> (Simulator, Controller<sim_backend::SimPlatform>) {
    let sim = Simulator::new(SimConfig {
        mdts: 1, // 8 KiB per command: long transfers split
        namespaces: vec![NamespaceConfig::memory(lba, bytes)],
        ..SimConfig::default()
    })
    .unwrap();
    let ctrl = Controller::new(sim.platform(), ControllerConfig::default()).unwrap();
    (sim, ctrl)
}

fn model_check(lba: u32) {
    const SIZE: u64 = 1 << 20;
    let (sim, mut ctrl) = sim(lba, SIZE);
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_queue_pair(8).unwrap();
    let mut model = vec![0u8; SIZE as usize];
    let mut dev = NamespaceIo::new(&ns, &mut qp).unwrap();
    assert_eq!(dev.size(), SIZE);
    let mut rng = Rng(0x5eed ^ lba as u64);
    for op in 0..400 {
        let pos = rng.below(SIZE + 100);
        let len = match rng.below(4) {
            0 => rng.below(16) as usize,
            1 => rng.below(lba as u64 * 3) as usize,
            2 => rng.below(64 << 10) as usize,
            _ => lba as usize * (1 + rng.below(40) as usize),
        };
        assert_eq!(dev.seek(SeekFrom::Start(pos)).unwrap(), pos);
        if rng.below(2) == 0 {
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let r = dev.write_all(&data);
            if pos >= SIZE && len > 0 {
                let e = r.unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::WriteZero, "op {op}");
            } else if pos + len as u64 > SIZE {
                // Cut short at the end: write_all reports it, the part before the end landed.
                assert!(r.is_err(), "op {op}");
                let k = (SIZE - pos) as usize;
                model[pos as usize..].copy_from_slice(&data[..k]);
            } else {
                r.unwrap();
                model[pos as usize..pos as usize + len].copy_from_slice(&data);
                assert_eq!(dev.position(), pos + len as u64);
            }
        } else {
            let mut buf = vec![0u8; len];
            let mut got = 0;
            loop {
                let n = dev.read(&mut buf[got..]).unwrap();
                if n == 0 {
                    break;
                }
                got += n;
            }
            let expect = (SIZE.saturating_sub(pos) as usize).min(len);
            assert_eq!(got, expect, "op {op}: read {len} at {pos}");
            if got > 0 {
                assert_eq!(
                    buf[..got],
                    model[pos as usize..pos as usize + got],
                    "op {op}"
                );
            }
        }
    }
    dev.flush().unwrap();
    // What the medium holds is the model.
    let all = sim.namespace_bytes(1, 0, SIZE / lba as u64).unwrap();
    assert!(all == model, "the namespace differs from the model");
    sim.assert_no_violations();
}

#[test]
fn byte_stream_matches_a_model_512() {
    model_check(512);
}

#[test]
fn byte_stream_matches_a_model_4096() {
    model_check(4096);
}

#[test]
fn seeks_and_io_copy() {
    let (_sim, mut ctrl) = sim(512, 1 << 20);
    let ns = ctrl.namespace(1).unwrap().clone();
    let mut qp = ctrl.create_io_queue_pair(8).unwrap();
    let mut dev = NamespaceIo::new(&ns, &mut qp).unwrap();
    assert_eq!(dev.seek(SeekFrom::End(-10)).unwrap(), (1 << 20) - 10);
    assert_eq!(dev.seek(SeekFrom::Current(4)).unwrap(), (1 << 20) - 6);
    assert_eq!(
        dev.seek(SeekFrom::Current(-(1 << 21))).unwrap_err().kind(),
        std::io::ErrorKind::InvalidInput
    );
    dev.seek(SeekFrom::Start(0)).unwrap();
    let src: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::io::copy(&mut &src[..], &mut dev).unwrap();
    dev.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    (&mut dev).take(300_000).read_to_end(&mut back).unwrap();
    assert_eq!(back, src);
}
