//! Human-readable output of identify data and log pages, in the shape `nvme-cli` prints.

use nvme_core::hw::Platform;
use nvme_core::spec::identify::oncs;
use nvme_core::spec::{
    Cap, ErrorLogEntry, FirmwareSlotLog, IdentifyController, IdentifyNamespace, SmartLog, Vs,
};
use nvme_core::Controller;
use serde_json::{json, Value};

use crate::exit::n128;

/// Names of the optional NVM commands in ONCS.
pub fn oncs_names(v: u16) -> String {
    let names = [
        (oncs::COMPARE, "Compare"),
        (oncs::WRITE_UNCORRECTABLE, "Write-Uncorrectable"),
        (oncs::DATASET_MANAGEMENT, "Dataset-Management"),
        (oncs::WRITE_ZEROES, "Write-Zeroes"),
        (oncs::SAVE_SELECT, "Save/Select"),
        (oncs::RESERVATIONS, "Reservations"),
        (oncs::TIMESTAMP, "Timestamp"),
        (oncs::VERIFY, "Verify"),
        (oncs::COPY, "Copy"),
    ];
    let s: Vec<&str> = names
        .iter()
        .filter(|(b, _)| v & b != 0)
        .map(|(_, n)| *n)
        .collect();
    if s.is_empty() {
        "none beyond Read/Write/Flush".into()
    } else {
        format!("Read Write Flush {}", s.join(" "))
    }
}

/// `nvme list`-style lines.
pub fn list<P: Platform>(c: &Controller<P>, dev: &str, volatile: &dyn Fn(u32) -> Option<bool>) {
    let id = c.identify();
    println!(
        "{:<24} {:<20} {:<40} {:>5} {:>22} {:<10} {:<8} {:<8}",
        "Device", "SN", "Model", "NSID", "Usage", "Format", "FW Rev", "Medium"
    );
    println!(
        "{:-<24} {:-<20} {:-<40} {:->5} {:->22} {:-<10} {:-<8} {:-<8}",
        "", "", "", "", "", "", "", ""
    );
    for ns in c.namespaces() {
        let usage = format!(
            "{:.2} GB / {:.2} GB",
            ns.identify().nuse as f64 * ns.lba_size() as f64 / 1e9,
            ns.size_bytes() as f64 / 1e9
        );
        println!(
            "{:<24} {:<20} {:<40} {:>5} {:>22} {:<10} {:<8} {:<8}",
            dev,
            id.sn.as_str(),
            id.mn.as_str(),
            ns.nsid(),
            usage,
            format!("{} B + {} B", ns.lba_size(), ns.metadata_size()),
            id.fr.as_str(),
            match volatile(ns.nsid()) {
                Some(true) => "volatile",
                Some(false) => "image",
                None => "device",
            }
        );
    }
}

/// `nvme id-ctrl`-style output.
pub fn id_ctrl(id: &IdentifyController, cap: Cap, vs: Vs) {
    println!("NVME Identify Controller:");
    println!("vid       : {:#x}", id.vid);
    println!("ssvid     : {:#x}", id.ssvid);
    println!("sn        : {}", id.sn);
    println!("mn        : {}", id.mn);
    println!("fr        : {}", id.fr);
    println!("rab       : {}", id.rab);
    println!(
        "ieee      : {:02x}{:02x}{:02x}",
        id.ieee[2], id.ieee[1], id.ieee[0]
    );
    println!("cmic      : {:#x}", id.cmic);
    println!("mdts      : {}", id.mdts);
    println!("cntlid    : {:#x}", id.cntlid);
    println!("ver       : {:#x}", id.ver);
    println!("rtd3r     : {:#x}", id.rtd3r);
    println!("rtd3e     : {:#x}", id.rtd3e);
    println!("oaes      : {:#x}", id.oaes);
    println!("ctratt    : {:#x}", id.ctratt);
    println!("cntrltype : {}", id.cntrltype);
    println!("oacs      : {:#x}", id.oacs);
    println!("acl       : {}", id.acl);
    println!("aerl      : {}", id.aerl);
    println!("frmw      : {:#x}", id.frmw);
    println!("lpa       : {:#x}", id.lpa);
    println!("elpe      : {}", id.elpe);
    println!("npss      : {}", id.npss);
    println!("wctemp    : {}", id.wctemp);
    println!("cctemp    : {}", id.cctemp);
    println!("sqes      : {:#x}", id.sqes);
    println!("cqes      : {:#x}", id.cqes);
    println!("maxcmd    : {}", id.maxcmd);
    println!("nn        : {}", id.nn);
    println!("oncs      : {:#x} ({})", id.oncs, oncs_names(id.oncs));
    println!("fuses     : {:#x}", id.fuses);
    println!("fna       : {:#x}", id.fna);
    println!("vwc       : {:#x}", id.vwc);
    println!("awun      : {}", id.awun);
    println!("awupf     : {}", id.awupf);
    println!("sgls      : {:#x}", id.sgls);
    println!("subnqn    : {}", id.subnqn);
    println!(
        "CAP       : {:#018x} (MQES {}, TO {} ms, DSTRD {}, MPSMIN {}, MPSMAX {}, CSS {:#x})",
        cap.0,
        cap.mqes_z() as u32 + 1,
        cap.timeout_ms(),
        cap.dstrd(),
        cap.mpsmin(),
        cap.mpsmax(),
        cap.css()
    );
    println!("VS        : {vs}");
}

/// `nvme id-ns`-style output.
pub fn id_ns(nsid: u32, ns: &IdentifyNamespace, volatile: Option<bool>) {
    println!("NVME Identify Namespace {nsid}:");
    if volatile == Some(true) {
        println!("(volatile: the simulator keeps this namespace in memory; it is lost at exit)");
    }
    println!("nsze    : {:#x}", ns.nsze);
    println!("ncap    : {:#x}", ns.ncap);
    println!("nuse    : {:#x}", ns.nuse);
    println!("nsfeat  : {:#x}", ns.nsfeat);
    println!("nlbaf   : {}", ns.nlbaf_z);
    println!("flbas   : {:#x}", ns.flbas);
    println!("mc      : {:#x}", ns.mc);
    println!("dpc     : {:#x}", ns.dpc);
    println!("dps     : {:#x}", ns.dps);
    println!("nmic    : {:#x}", ns.nmic);
    println!("dlfeat  : {}", ns.dlfeat);
    println!(
        "nguid   : {}",
        ns.nguid
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    println!(
        "eui64   : {}",
        ns.eui64
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    for i in 0..=ns.nlbaf_z.min(63) as usize {
        let f = ns.lbaf[i];
        let used = if i == ns.format_index() {
            " (in use)"
        } else {
            ""
        };
        println!(
            "lbaf {i:>2} : ms:{:<3} lbads:{:<2} rp:{:#x}{used}",
            f.ms, f.lbads, f.rp
        );
    }
}

/// `nvme smart-log`-style output.
pub fn smart(s: &SmartLog) {
    println!("Smart Log for NVME device:");
    println!(
        "critical_warning                    : {:#x}",
        s.critical_warning
    );
    println!(
        "temperature                         : {} K ({} °C)",
        s.composite_temperature,
        s.composite_temperature as i32 - 273
    );
    println!(
        "available_spare                     : {}%",
        s.available_spare
    );
    println!(
        "available_spare_threshold           : {}%",
        s.available_spare_threshold
    );
    println!(
        "percentage_used                     : {}%",
        s.percentage_used
    );
    println!(
        "data_units_read                     : {}",
        s.data_units_read
    );
    println!(
        "data_units_written                  : {}",
        s.data_units_written
    );
    println!(
        "host_read_commands                  : {}",
        s.host_read_commands
    );
    println!(
        "host_write_commands                 : {}",
        s.host_write_commands
    );
    println!(
        "controller_busy_time                : {}",
        s.controller_busy_time
    );
    println!("power_cycles                        : {}", s.power_cycles);
    println!("power_on_hours                      : {}", s.power_on_hours);
    println!(
        "unsafe_shutdowns                    : {}",
        s.unsafe_shutdowns
    );
    println!("media_errors                        : {}", s.media_errors);
    println!(
        "num_err_log_entries                 : {}",
        s.num_error_log_entries
    );
}

/// `nvme error-log`-style output.
pub fn error_log(log: &[ErrorLogEntry]) {
    println!("Error Log Entries for device: {} entries", log.len());
    for (i, e) in log.iter().enumerate() {
        println!("Entry[{i:2}]: error_count {} sqid {} cmdid {:#x} status {} lba {} nsid {:#x} param_err_loc {:#x}", e.error_count, e.sqid, e.cid, e.status(), e.lba, e.nsid, e.param_error_location);
    }
}

/// `nvme fw-log`-style output.
pub fn fw_log(f: &FirmwareSlotLog) {
    println!("Firmware Log for device:");
    println!("afi  : {:#x} (active slot {})", f.afi, f.active_slot());
    for (i, s) in f.frs.iter().enumerate() {
        if !s.as_str().is_empty() {
            println!("frs{} : {}", i + 1, s);
        }
    }
}

/// A hex dump (16 bytes a line with offsets), for reads to stdout.
pub fn hexdump(data: &[u8]) {
    for (i, line) in data.chunks(16).enumerate() {
        println!("{}", hexline(i * 16, line));
    }
}

/// One hex dump line: offset, up to 16 bytes in hex, the printable ones as text.
pub fn hexline(off: usize, line: &[u8]) -> String {
    {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let asc: String = line
            .iter()
            .map(|&b| {
                if (0x20..0x7f).contains(&b) {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        format!("{off:08x}: {:<47}  {asc}", hex.join(" "))
    }
}

/// Identify Controller as nvme-cli's `id-ctrl -o json` names it.
pub fn id_ctrl_json(id: &IdentifyController) -> Value {
    json!({
        "vid": id.vid, "ssvid": id.ssvid, "sn": id.sn.as_str(), "mn": id.mn.as_str(),
        "fr": id.fr.as_str(), "rab": id.rab,
        "ieee": u32::from(id.ieee[0]) | u32::from(id.ieee[1]) << 8 | u32::from(id.ieee[2]) << 16,
        "cmic": id.cmic, "mdts": id.mdts, "cntlid": id.cntlid, "ver": id.ver,
        "rtd3r": id.rtd3r, "rtd3e": id.rtd3e, "oaes": id.oaes, "ctratt": id.ctratt,
        "cntrltype": id.cntrltype, "oacs": id.oacs, "acl": id.acl, "aerl": id.aerl,
        "frmw": id.frmw, "lpa": id.lpa, "elpe": id.elpe, "npss": id.npss,
        "wctemp": id.wctemp, "cctemp": id.cctemp, "sqes": id.sqes, "cqes": id.cqes,
        "maxcmd": id.maxcmd, "nn": id.nn, "oncs": id.oncs, "fuses": id.fuses, "fna": id.fna,
        "vwc": id.vwc, "awun": id.awun, "awupf": id.awupf, "sgls": id.sgls,
        "subnqn": id.subnqn.as_str(),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Identify Namespace as nvme-cli's `id-ns -o json` names it, plus `"volatile"` (the
/// namespace lives in memory and is lost when the tool exits) where the tool knows it.
pub fn id_ns_json(ns: &IdentifyNamespace, volatile: Option<bool>) -> Value {
    let lbafs: Vec<Value> = (0..=ns.nlbaf_z.min(63) as usize)
        .map(|i| json!({"ms": ns.lbaf[i].ms, "ds": ns.lbaf[i].lbads, "rp": ns.lbaf[i].rp}))
        .collect();
    let mut v = json!({
        "nsze": ns.nsze, "ncap": ns.ncap, "nuse": ns.nuse, "nsfeat": ns.nsfeat,
        "nlbaf": ns.nlbaf_z, "flbas": ns.flbas, "mc": ns.mc, "dpc": ns.dpc, "dps": ns.dps,
        "nmic": ns.nmic, "dlfeat": ns.dlfeat, "nguid": hex(&ns.nguid), "eui64": hex(&ns.eui64),
        "lbafs": lbafs,
    });
    if let Some(vol) = volatile {
        v["volatile"] = vol.into();
    }
    v
}

/// The SMART / Health log as nvme-cli's `smart-log -o json` names it (temperature in
/// kelvins, as there).
pub fn smart_json(s: &SmartLog) -> Value {
    json!({
        "critical_warning": s.critical_warning,
        "temperature": s.composite_temperature,
        "avail_spare": s.available_spare,
        "spare_thresh": s.available_spare_threshold,
        "percent_used": s.percentage_used,
        "data_units_read": n128(s.data_units_read),
        "data_units_written": n128(s.data_units_written),
        "host_read_commands": n128(s.host_read_commands),
        "host_write_commands": n128(s.host_write_commands),
        "controller_busy_time": n128(s.controller_busy_time),
        "power_cycles": n128(s.power_cycles),
        "power_on_hours": n128(s.power_on_hours),
        "unsafe_shutdowns": n128(s.unsafe_shutdowns),
        "media_errors": n128(s.media_errors),
        "num_err_log_entries": n128(s.num_error_log_entries),
    })
}

/// The Error Information log as nvme-cli's `error-log -o json` names it.
pub fn error_log_json(log: &[ErrorLogEntry]) -> Value {
    let errors: Vec<Value> = log
        .iter()
        .map(|e| {
            json!({
                "error_count": e.error_count, "sqid": e.sqid, "cmdid": e.cid,
                "status_field": e.status_field >> 1, "phase_tag": e.status_field & 1,
                "parm_error_location": e.param_error_location, "lba": e.lba, "nsid": e.nsid,
                "vs": e.vs, "trtype": e.trtype, "cs": e.cs,
            })
        })
        .collect();
    json!({ "errors": errors })
}

/// The Firmware Slot log as nvme-cli's `fw-log -o json` names it.
pub fn fw_log_json(dev: &str, f: &FirmwareSlotLog) -> Value {
    let mut m = serde_json::Map::new();
    m.insert("Active Firmware Slot (afi)".into(), f.afi.into());
    for (i, s) in f.frs.iter().enumerate() {
        if !s.as_str().is_empty() {
            m.insert(format!("Firmware Rev Slot {}", i + 1), s.as_str().into());
        }
    }
    json!({ dev: Value::Object(m) })
}

/// One `nvme list -o json` device entry per namespace of a brought-up controller
/// (nvme-cli's field names, plus `"Volatile"`).
pub fn list_entries<P: Platform>(
    c: &Controller<P>,
    dev: &str,
    volatile: &dyn Fn(u32) -> Option<bool>,
) -> Vec<Value> {
    let id = c.identify();
    c.namespaces()
        .iter()
        .map(|ns| {
            let mut v = json!({
                "DevicePath": dev,
                "NameSpace": ns.nsid(),
                "Firmware": id.fr.as_str(),
                "ModelNumber": id.mn.as_str(),
                "SerialNumber": id.sn.as_str(),
                "UsedBytes": ns.identify().nuse.saturating_mul(u64::from(ns.lba_size())),
                "MaximumLBA": ns.blocks(),
                "PhysicalSize": ns.size_bytes(),
                "SectorSize": ns.lba_size(),
            });
            if let Some(vol) = volatile(ns.nsid()) {
                v["Volatile"] = vol.into();
            }
            v
        })
        .collect()
}
