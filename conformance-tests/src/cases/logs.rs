//! Get Log Page (NVMe Base §5.1.12).

use anyhow::ensure;
use nvme_core::spec::log::lid;
use nvme_core::spec::{Command, ErrorLogEntry, SmartLog};

use super::helpers::{buffer_with, namespace, pattern, scratch_lba};
use crate::backend::Backend;
use crate::case;
use crate::runner::{Case, Ctx, Verdict};

/// The cases of this area.
pub fn cases<B: Backend>() -> Vec<Case<B>> {
    vec![
        case!(
            "LOG-01",
            LogPages,
            "§5.1.12.1.3",
            "the SMART / Health log reads, with a sane temperature and spare",
            smart::<B>
        ),
        case!(
            "LOG-02",
            LogPages,
            "§5.1.12.1.3",
            "SMART host read/write command counters move after I/O",
            smart_counters_move::<B>
        ),
        case!(
            "LOG-03",
            LogPages,
            "§5.1.12.1.4",
            "the Firmware Slot log names an active slot holding a revision",
            firmware_slot::<B>
        ),
        case!(
            "LOG-04",
            LogPages,
            "§5.1.12",
            "Get Log Page with an unsupported LID fails with Invalid Log Page",
            unsupported_lid::<B>
        ),
        case!(
            "LOG-05",
            LogPages,
            "§5.1.12.1.2",
            "the Error Information log reads (all entries of ELPE + 1)",
            error_log::<B>
        ),
        case!("LOG-06", LogPages, "§5.1.12", "the mandatory logs (01h, 02h, 03h) read with NUMD of one dword, matching the start of a full read", one_dword::<B>),
        case!("LOG-07", LogPages, "§5.1.12", "a SMART read at a dword offset (LPO) returns those bytes of the log", smart_offset::<B>),
        case!("LOG-08", LogPages, "§5.1.12", "a Get Log Page offset beyond the end of the SMART log fails with Invalid Field", offset_beyond::<B>),
        case!("LOG-09", LogPages, "§5.1.12.1.3", "SMART Data Units Read/Written grow by at least 4 after 2 MiB of reads and writes", data_units::<B>),
        case!("LOG-10", LogPages, "§5.1.12.1.3", "a SMART read for one namespace succeeds when LPA bit 0 is set and fails with Invalid Field when it is clear", per_namespace_smart::<B>),
        case!("LOG-11", LogPages, "§5.1.12.1.2", "Error Information entries have unique error counts, and an entry for a failed command names its SQID, CID and status", error_entries::<B>),
        case!("LOG-12", LogPages, "§5.1.12.1.5", "the Commands Supported and Effects log marks every mandatory admin and NVM command supported", command_effects::<B>),
    ]
}

fn smart<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let s = cx.ctrl()?.smart_log()?;
    // 0 K means "not reported"; anything reported must be a plausible device temperature.
    ensure!(
        s.composite_temperature == 0 || (200..400).contains(&s.composite_temperature),
        "composite temperature {} K",
        s.composite_temperature
    );
    ensure!(
        s.available_spare <= 100 && s.available_spare_threshold <= 100,
        "spare {}% threshold {}%",
        s.available_spare,
        s.available_spare_threshold
    );
    Ok(Verdict::Pass)
}

fn smart_counters_move<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let before = c.smart_log()?;
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let lba = scratch_lba(&ns, 4);
    let n = super::helpers::fit(c, &ns, 4) as usize;
    let mut qp = c.create_io_queue_pair(8)?;
    for _ in 0..4 {
        qp.write(&ns, lba, buffer_with(c, &pattern(2, lba, n * bs, bs))?)?;
        qp.read(&ns, lba, c.alloc_buffer(n * bs)?)?;
    }
    c.delete_io_queue_pair(qp)?;
    let after: SmartLog = c.smart_log()?;
    ensure!(
        after.host_write_commands >= before.host_write_commands + 4,
        "host write commands {} -> {}",
        before.host_write_commands,
        after.host_write_commands
    );
    ensure!(
        after.host_read_commands >= before.host_read_commands + 4,
        "host read commands {} -> {}",
        before.host_read_commands,
        after.host_read_commands
    );
    Ok(Verdict::Pass)
}

fn firmware_slot<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let f = c.firmware_slot_log()?;
    let slot = f.active_slot();
    ensure!((1..=7).contains(&slot), "AFI names slot {slot}");
    let fr = c.identify().fr;
    let in_slot = f.frs[slot as usize - 1];
    ensure!(
        !in_slot.as_str().is_empty(),
        "the active slot {slot} holds no revision"
    );
    if in_slot.as_str() != fr.as_str() {
        // §5.1.13.2.1: FR is the revision of the active firmware, so it matches the active slot.
        return cx.deviation(format!(
            "active slot {slot} holds {:?}, Identify FR is {:?}",
            in_slot.as_str(),
            fr.as_str()
        ));
    }
    Ok(Verdict::Pass)
}

fn unsupported_lid<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    // 0x7F is in the reserved range of log page identifiers.
    let (r, _) = cx.ctrl()?.admin_read(
        Command::get_log_page(0x7F, 0xFFFF_FFFF, 128, 0, 0, false),
        512,
    )?;
    cx.expect_status("Get Log Page LID 7Fh", r.status(), &[(1, 0x09)])
}

fn error_log<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let n = c.identify().elpe as usize + 1;
    let bytes = c.get_log_page(lid::ERROR_INFO, 0, 0, (n * 64).min(64 * 1024), false)?;
    ensure!(bytes.len() == (n * 64).min(64 * 1024), "short error log");
    Ok(Verdict::Pass)
}

fn one_dword<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    for (log, nsid) in [
        (lid::ERROR_INFO, 0),
        (lid::SMART, 0xFFFF_FFFF),
        (lid::FIRMWARE_SLOT, 0),
    ] {
        let (r, one) = c.admin_read(Command::get_log_page(log, nsid, 1, 0, 0, true), 4)?;
        ensure!(
            r.status().is_success(),
            "Get Log Page {log:02x}h with NUMD 1 dword: {}",
            r.status()
        );
        let full = c.get_log_page(log, nsid, 0, 512, true)?;
        // The SMART temperature and spare may move between reads; its warning byte does not.
        let n = if log == lid::SMART { 1 } else { 4 };
        ensure!(
            one[..n] == full[..n],
            "log {log:02x}h: one dword {:02x?}, full read starts {:02x?}",
            &one[..n],
            &full[..n]
        );
    }
    Ok(Verdict::Pass)
}

fn extended<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Option<Verdict>> {
    let c = cx.ctrl()?;
    Ok((c.identify().lpa & 4 == 0)
        .then(|| Verdict::Skip("LPA bit 2 is clear: no log page offset (extended data)".into())))
}

fn smart_offset<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    if let Some(v) = extended(cx)? {
        return Ok(v);
    }
    let c = cx.ctrl()?;
    let full = c.get_log_page(lid::SMART, 0xFFFF_FFFF, 0, 512, false)?;
    // Bytes 32..96: data units and host command counters, which no admin command moves.
    let part = c.get_log_page(lid::SMART, 0xFFFF_FFFF, 32, 64, false)?;
    ensure!(
        part == full[32..96],
        "SMART bytes 32..96 read at offset 32 differ from the full log"
    );
    Ok(Verdict::Pass)
}

fn offset_beyond<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    if let Some(v) = extended(cx)? {
        return Ok(v);
    }
    let (r, _) = cx.ctrl()?.admin_read(
        Command::get_log_page(lid::SMART, 0xFFFF_FFFF, 128, 1024, 0, false),
        512,
    )?;
    if r.status().is_success() {
        anyhow::bail!("a SMART read at offset 1024 of the 512-byte log succeeded");
    }
    cx.expect_status("SMART at offset 1024", r.status(), &[(0, 0x02)])
}

fn data_units<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let ns = namespace(c, None)?;
    let bs = ns.lba_size() as usize;
    let chunk = (c.max_transfer() / bs).clamp(1, 256) * bs;
    let total = 2usize << 20;
    let blocks = (total / bs) as u64;
    let before = c.smart_log()?;
    let lba = scratch_lba(&ns, blocks);
    let mut qp = c.create_io_queue_pair(8)?;
    let r = (|| -> anyhow::Result<()> {
        let mut done = 0;
        while done < total {
            let len = chunk.min(total - done);
            let at = lba + (done / bs) as u64;
            qp.write(&ns, at, buffer_with(c, &pattern(4, at, len, bs))?)
                .map_err(|e| anyhow::anyhow!("{}", e.error))?;
            qp.read(&ns, at, c.alloc_buffer(len)?)
                .map_err(|e| anyhow::anyhow!("{}", e.error))?;
            done += len;
        }
        Ok(())
    })();
    c.delete_io_queue_pair(qp)?;
    r?;
    let after = c.smart_log()?;
    // 2 MiB = 4096 units of 512 bytes; the counters are thousands of units, rounded up.
    ensure!(
        after.data_units_written >= before.data_units_written + 4,
        "Data Units Written {} -> {} after 2 MiB of writes",
        before.data_units_written,
        after.data_units_written
    );
    ensure!(
        after.data_units_read >= before.data_units_read + 4,
        "Data Units Read {} -> {} after 2 MiB of reads",
        before.data_units_read,
        after.data_units_read
    );
    Ok(Verdict::Pass)
}

fn per_namespace_smart<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    let nsid = namespace(c, None)?.nsid();
    let supported = c.identify().lpa & 1 != 0;
    let (r, page) = c.admin_read(
        Command::get_log_page(lid::SMART, nsid, 128, 0, 0, false),
        512,
    )?;
    if supported {
        ensure!(
            r.status().is_success(),
            "LPA bit 0 is set, but SMART for NSID {nsid} failed: {}",
            r.status()
        );
        let s = SmartLog::parse(&page)?;
        ensure!(
            s.available_spare <= 100,
            "per-namespace SMART reports {}% spare",
            s.available_spare
        );
        return Ok(Verdict::Pass);
    }
    if r.status().is_success() {
        anyhow::bail!("LPA bit 0 is clear, but SMART for NSID {nsid} succeeded");
    }
    cx.expect_status(
        &format!("SMART for NSID {nsid} with LPA bit 0 clear"),
        r.status(),
        &[(0, 0x02)],
    )
}

fn error_entries<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    // A command that fails: Get Features of the reserved FID 00h.
    let failed = c.admin_command(Command::get_features(0x00, 0, 0, 0))?;
    ensure!(
        !failed.status().is_success(),
        "Get Features FID 00h succeeded"
    );
    let n = (c.identify().elpe as usize + 1).min(1024);
    let bytes = c.get_log_page(lid::ERROR_INFO, 0, 0, n * ErrorLogEntry::LEN, false)?;
    let entries: Vec<ErrorLogEntry> = bytes
        .chunks_exact(ErrorLogEntry::LEN)
        .map(ErrorLogEntry::parse)
        .filter(|e| e.error_count != 0)
        .collect();
    for (i, e) in entries.iter().enumerate() {
        ensure!(
            entries[i + 1..]
                .iter()
                .all(|f| f.error_count != e.error_count),
            "error count {} appears twice",
            e.error_count
        );
    }
    // The newest entry, if it is for the failed command, must describe it.
    if let Some(e) = entries.iter().max_by_key(|e| e.error_count) {
        if e.sqid == 0 && e.cid == failed.cid() {
            ensure!(
                e.status().sct() == failed.status().sct()
                    && e.status().sc() == failed.status().sc(),
                "the entry for CID {:#x} records status {}, the command completed with {}",
                e.cid,
                e.status(),
                failed.status()
            );
        }
    }
    Ok(Verdict::Pass)
}

fn command_effects<B: Backend>(cx: &mut Ctx<'_, B>) -> anyhow::Result<Verdict> {
    let c = cx.ctrl()?;
    if c.identify().lpa & 2 == 0 {
        return Ok(Verdict::Skip(
            "LPA bit 1 is clear: no Commands Supported and Effects log".into(),
        ));
    }
    let log = c.get_log_page(lid::COMMAND_EFFECTS, 0, 0, 4096, false)?;
    let csupp = |base: usize, op: u8| {
        let o = base + op as usize * 4;
        log[o] & 1 != 0
    };
    for op in [0x00u8, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0A, 0x0C] {
        ensure!(
            csupp(0, op),
            "admin opcode {op:02x}h is mandatory but not marked supported"
        );
    }
    for op in [0x00u8, 0x01, 0x02] {
        ensure!(
            csupp(1024, op),
            "NVM opcode {op:02x}h is mandatory but not marked supported"
        );
    }
    Ok(Verdict::Pass)
}
