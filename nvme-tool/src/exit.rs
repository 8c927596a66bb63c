//! Exit codes, the output format (`-o normal|json`) and the logger.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | any other failure (a file that cannot be read or written, an interrupted run, ...) |
//! | 2 | usage error: a bad option, argument or combination (nothing was sent to a device) |
//! | 3 | the device could not be opened or brought up (VFIO, sysfs, simulator image, bring-up) |
//! | 4 | the controller completed a command with an error status, or did not complete it in time |
//! | 5 | miscompare: Compare Failure (NVM Command Set 1.1 §3.3.1, SCT 2h SC 85h), or data read back that differs from what was written (soak) |

use std::fmt;
use std::io::Write as _;
use std::process::ExitCode;

use clap::ValueEnum;
use nvme_core::spec::status::media;
use nvme_core::spec::StatusCodeType;

/// Exit code 2.
pub const USAGE: u8 = 2;
/// Exit code 3.
pub const DEVICE: u8 = 3;
/// Exit code 4.
pub const NVME_STATUS: u8 = 4;
/// Exit code 5.
pub const MISCOMPARE: u8 = 5;

/// The table of exit codes, for `--help`.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  success
  1  other failure (a file, an interrupted run, ...)
  2  usage error (bad option or argument; nothing was sent to the device)
  3  the device could not be opened or brought up
  4  a command failed with an NVMe error status, or timed out
  5  miscompare (Compare Failure, or data read back differs)

Logging: -v (info), -vv (debug), -vvv (trace) before the command, or RUST_LOG=warn|info|debug|trace.";

/// A usage error found after parsing (a value out of range, a bad combination).
#[derive(Debug)]
pub struct Usage(pub String);
impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Usage {}

/// Data that differs from what was expected.
#[derive(Debug)]
pub struct Miscompare(pub String);
impl fmt::Display for Miscompare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Miscompare {}

/// The device could not be opened or brought up (a context marker).
#[derive(Debug)]
pub struct DeviceOpen(pub String);
impl fmt::Display for DeviceOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for DeviceOpen {}

/// `bail!` for usage errors: exit code 2.
#[macro_export]
macro_rules! usage {
    ($($t:tt)*) => {
        return Err(anyhow::Error::new($crate::exit::Usage(format!($($t)*))))
    };
}

/// The exit code of an error (see the module table).
pub fn code_of(e: &anyhow::Error) -> u8 {
    if e.downcast_ref::<Usage>().is_some() {
        return USAGE;
    }
    if e.downcast_ref::<Miscompare>().is_some() {
        return MISCOMPARE;
    }
    if e.downcast_ref::<DeviceOpen>().is_some() {
        return DEVICE;
    }
    for cause in e.chain() {
        if let Some(ne) = cause.downcast_ref::<nvme_core::Error>() {
            return match ne {
                nvme_core::Error::Command { status, .. }
                    if status.is(StatusCodeType::MEDIA, media::COMPARE_FAILURE) =>
                {
                    MISCOMPARE
                }
                nvme_core::Error::Command { .. } | nvme_core::Error::Timeout { .. } => NVME_STATUS,
                nvme_core::Error::InvalidArgument(_)
                | nvme_core::Error::LbaOutOfRange { .. }
                | nvme_core::Error::TransferTooLarge { .. }
                | nvme_core::Error::UnknownTransfer { .. }
                | nvme_core::Error::TransferMismatch { .. } => USAGE,
                nvme_core::Error::DeviceGone
                | nvme_core::Error::ControllerFatal
                | nvme_core::Error::ReadyTimeout { .. } => DEVICE,
                _ => 1,
            };
        }
        if cause.downcast_ref::<vfio_backend::VfioError>().is_some()
            || cause.downcast_ref::<sim_backend::SimError>().is_some()
        {
            return DEVICE;
        }
    }
    1
}

/// Prints the error and turns it into the process's exit code.
pub fn report(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::from(code_of(e))
}

/// `-o` / `--output-format`, as nvme-cli's.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq, Default)]
pub enum OutputFormat {
    /// Human-readable text.
    #[default]
    Normal,
    /// JSON, with nvme-cli's field names where it has them.
    Json,
}

/// The `-o` option, flattened into every command that prints device data.
#[derive(clap::Args, Debug, Clone, Copy, Default)]
pub struct Out {
    /// Output format: normal or json (nvme-cli's field names).
    #[arg(
        short = 'o',
        long = "output-format",
        value_enum,
        default_value = "normal"
    )]
    pub format: OutputFormat,
}

impl Out {
    /// True for JSON.
    pub fn json(self) -> bool {
        self.format == OutputFormat::Json
    }
}

/// Prints a JSON value, pretty, on stdout.
pub fn print_json(v: &serde_json::Value) {
    let s = serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    println!("{s}");
}

/// A number for JSON: 128-bit log counters as integers when they fit 64 bits, else as a float
/// (as nvme-cli prints them).
pub fn n128(v: u128) -> serde_json::Value {
    match u64::try_from(v) {
        Ok(x) => x.into(),
        Err(_) => (v as f64).into(),
    }
}

/// A small logger for the `log` facade: level from `-v` (count) or `RUST_LOG`, lines on
/// stderr as `LEVEL target: message`.
struct Logger(log::LevelFilter);

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.0
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            let _ = writeln!(
                std::io::stderr().lock(),
                "{:<5} {}: {}",
                r.level(),
                r.target(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

/// The level for `verbose` `-v` flags and the `RUST_LOG` value: `-v` wins; `RUST_LOG` takes
/// `off|error|warn|info|debug|trace` (the first such word in it, e.g. `RUST_LOG=debug`);
/// otherwise warnings.
pub fn level(verbose: u8, rust_log: Option<&str>) -> log::LevelFilter {
    match verbose {
        0 => {}
        1 => return log::LevelFilter::Info,
        2 => return log::LevelFilter::Debug,
        _ => return log::LevelFilter::Trace,
    }
    rust_log
        .and_then(|s| {
            s.split([',', '='])
                .find_map(|w| w.trim().parse::<log::LevelFilter>().ok())
        })
        .unwrap_or(log::LevelFilter::Warn)
}

/// Installs the logger.
pub fn init_logger(verbose: u8) {
    let l = level(verbose, std::env::var("RUST_LOG").ok().as_deref());
    if log::set_boxed_logger(Box::new(Logger(l))).is_ok() {
        log::set_max_level(l);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;
    use nvme_core::spec::Status;

    fn cmd_err(status: Status) -> nvme_core::Error {
        nvme_core::Error::Command {
            opcode: 1,
            opcode_name: "Write",
            status,
            dw0: 0,
        }
    }

    #[test]
    fn exit_codes_by_kind() {
        let e = anyhow::Error::new(Usage("bad".into())).context("outer");
        assert_eq!(code_of(&e), USAGE);
        let e = anyhow::Error::new(Miscompare("differs".into()));
        assert_eq!(code_of(&e), MISCOMPARE);
        let e: anyhow::Error = Err::<(), _>(cmd_err(Status::generic(0x02, true)))
            .context("id-ctrl")
            .unwrap_err();
        assert_eq!(code_of(&e), NVME_STATUS);
        let e: anyhow::Error = Err::<(), _>(cmd_err(Status::media(media::COMPARE_FAILURE, false)))
            .context("compare")
            .unwrap_err();
        assert_eq!(code_of(&e), MISCOMPARE);
        let e: anyhow::Error = Err::<(), _>(cmd_err(Status::generic(0x06, false)))
            .context(DeviceOpen("bringing up".into()))
            .unwrap_err();
        assert_eq!(code_of(&e), DEVICE, "bring-up failures are device errors");
        assert_eq!(code_of(&anyhow::anyhow!("disk full")), 1);
    }

    #[test]
    fn log_levels() {
        assert_eq!(level(0, None), log::LevelFilter::Warn);
        assert_eq!(level(1, Some("error")), log::LevelFilter::Info);
        assert_eq!(level(2, None), log::LevelFilter::Debug);
        assert_eq!(level(0, Some("debug")), log::LevelFilter::Debug);
        assert_eq!(
            level(0, Some("vfio_backend=trace")),
            log::LevelFilter::Trace
        );
        assert_eq!(level(0, Some("nonsense")), log::LevelFilter::Warn);
    }

    #[test]
    fn big_counters_stay_numbers() {
        assert_eq!(n128(5), serde_json::json!(5));
        assert!(n128(u128::MAX).is_f64());
    }
}
