//! How many bytes a command moves through its data pointer, derived from the command's own
//! fields. The core refuses a buffer that does not match, so a command can never make the
//! device transfer past the memory it was given.

use super::cmd::Command;
use super::features::FeatureId;
use super::opcode::{AdminOpcode, NvmOpcode};

/// The data transfer a command describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLength {
    /// The command moves no data through PRP1/PRP2.
    None,
    /// Exactly this many bytes.
    Bytes(usize),
    /// This many logical blocks of the namespace the command names (NLB + 1).
    Blocks(u32),
    /// The core does not know the opcode (or the feature): it cannot tell.
    Unknown,
    /// The command hands memory to the controller beyond its own lifetime (queue creation,
    /// Doorbell Buffer Config, Host Memory Buffer) or is managed by the controller API
    /// (Asynchronous Event Request): never through passthrough.
    Managed,
}

/// NUMD from CDW10 bits 31:0 read as a 0's based dword count (Firmware Image Download,
/// Directive Send/Receive, Reservation Report): `(NUMD + 1) × 4` bytes.
fn numd_bytes(dw: u32) -> usize {
    (dw as usize + 1) * 4
}

/// The transfer of an NVM command set I/O command (NVM Command Set Specification §3.3).
pub fn io_data_length(cmd: &Command) -> DataLength {
    let op = NvmOpcode(cmd.opcode());
    match op {
        // §3.3.4 Read, §3.3.6 Write, §3.3.1 Compare: CDW12 bits 15:00 NLB, 0's based.
        NvmOpcode::READ | NvmOpcode::WRITE | NvmOpcode::COMPARE => {
            DataLength::Blocks((cmd.cdw12() & 0xFFFF) + 1)
        }
        // §3.3.2 Flush, §3.3.5 Write Uncorrectable, §3.3.7 Verify, §3.3.8 Write Zeroes: no
        // data pointer is used.
        NvmOpcode::FLUSH
        | NvmOpcode::WRITE_UNCORRECTABLE
        | NvmOpcode::VERIFY
        | NvmOpcode::WRITE_ZEROES => DataLength::None,
        // §3.3.3 Dataset Management: CDW10 bits 07:00 NR, 0's based, of 16-byte ranges.
        NvmOpcode::DATASET_MANAGEMENT => {
            DataLength::Bytes(((cmd.cdw10() & 0xFF) as usize + 1) * 16)
        }
        _ => match cmd.opcode() {
            // NVMe Base §7.3 Reservation Register: the 16-byte Reservation Register data
            // structure (CRKEY, NRKEY).
            0x0D => DataLength::Bytes(16),
            // §7.6 Reservation Report: CDW10 NUMD, 0's based dwords.
            0x0E => DataLength::Bytes(numd_bytes(cmd.cdw10())),
            // §7.2 Reservation Acquire: CRKEY and PRKEY, 16 bytes.
            0x11 => DataLength::Bytes(16),
            // §7.4 Reservation Release: CRKEY, 8 bytes.
            0x15 => DataLength::Bytes(8),
            _ => DataLength::Unknown,
        },
    }
}

/// The transfer of an admin command (NVMe Base Specification §5).
pub fn admin_data_length(cmd: &Command) -> DataLength {
    let op = AdminOpcode(cmd.opcode());
    match op {
        // §5.1.13 Identify: a 4096-byte data structure for every CNS.
        AdminOpcode::IDENTIFY => DataLength::Bytes(4096),
        // §5.1.12 Get Log Page: NUMDL (CDW10 31:16) and NUMDU (CDW11 15:00), 0's based dwords.
        AdminOpcode::GET_LOG_PAGE => {
            let numd = (cmd.cdw10() >> 16) as usize | ((cmd.cdw11() & 0xFFFF) as usize) << 16;
            DataLength::Bytes((numd + 1) * 4)
        }
        AdminOpcode::GET_FEATURES => {
            // §5.1.11: SEL 011b (supported capabilities) returns its answer in DW0 only.
            if (cmd.cdw10() >> 8) & 7 == 3 {
                return DataLength::None;
            }
            feature_data_length(cmd)
        }
        AdminOpcode::SET_FEATURES => feature_data_length(cmd),
        // §5.1.9 Firmware Image Download: CDW10 NUMD, 0's based dwords.
        AdminOpcode::FIRMWARE_DOWNLOAD => DataLength::Bytes(numd_bytes(cmd.cdw10())),
        // §5.1.21 Namespace Management: SEL 0h (create) takes a 4096-byte host buffer, SEL 1h
        // (delete) none.
        AdminOpcode::NAMESPACE_MANAGEMENT => match cmd.cdw10() & 0xF {
            0 => DataLength::Bytes(4096),
            1 => DataLength::None,
            _ => DataLength::Unknown,
        },
        // §5.1.20 Namespace Attachment: a 4096-byte Controller List.
        AdminOpcode::NAMESPACE_ATTACHMENT => DataLength::Bytes(4096),
        // §5.2.1/§5.2.2 Create I/O CQ/SQ and §5.1.6 Doorbell Buffer Config hand memory to
        // the controller for longer than the command; §5.1.2 AERs are the controller API's.
        AdminOpcode::CREATE_IO_CQ
        | AdminOpcode::CREATE_IO_SQ
        | AdminOpcode::DOORBELL_BUFFER_CONFIG
        | AdminOpcode::ASYNC_EVENT_REQUEST => DataLength::Managed,
        // Delete I/O SQ/CQ, Abort, Firmware Commit, Device Self-test, Keep Alive, Format NVM,
        // Sanitize: no data pointer.
        AdminOpcode::DELETE_IO_SQ
        | AdminOpcode::DELETE_IO_CQ
        | AdminOpcode::ABORT
        | AdminOpcode::FIRMWARE_COMMIT
        | AdminOpcode::DEVICE_SELF_TEST
        | AdminOpcode::KEEP_ALIVE
        | AdminOpcode::FORMAT_NVM
        | AdminOpcode::SANITIZE => DataLength::None,
        _ => match cmd.opcode() {
            // §5.1.7/§5.1.8 Directive Send/Receive: CDW10 NUMD, 0's based dwords.
            0x19 | 0x1A => DataLength::Bytes(numd_bytes(cmd.cdw10())),
            // §5.1.27/§5.1.28 Security Send/Receive: CDW11 AL, bytes.
            0x81 | 0x82 => DataLength::Bytes(cmd.cdw11() as usize),
            _ => DataLength::Unknown,
        },
    }
}

/// Get/Set Features data by Feature Identifier (§5.1.25, Figure "Feature Identifiers").
fn feature_data_length(cmd: &Command) -> DataLength {
    match FeatureId((cmd.cdw10() & 0xFF) as u8) {
        // §5.1.25.2.3 LBA Range Type: a 4096-byte list of ranges.
        FeatureId(0x03) => DataLength::Bytes(4096),
        // §5.1.25.2.11 Autonomous Power State Transition: 32 entries of 8 bytes.
        FeatureId(0x0C) => DataLength::Bytes(256),
        // §5.1.25.2.13 Host Memory Buffer: hands memory to the controller indefinitely.
        FeatureId(0x0D) => DataLength::Managed,
        // §5.1.25.2.14 Timestamp: 8 bytes.
        FeatureId::TIMESTAMP => DataLength::Bytes(8),
        // §5.1.25.3.1 Host Identifier: 8 bytes, or 16 with EXHID (CDW11 bit 0).
        FeatureId(0x81) => DataLength::Bytes(if cmd.cdw11() & 1 != 0 { 16 } else { 8 }),
        // Features whose value travels in CDW11 and completion DW0 only.
        FeatureId::ARBITRATION
        | FeatureId::POWER_MANAGEMENT
        | FeatureId::TEMPERATURE_THRESHOLD
        | FeatureId::ERROR_RECOVERY
        | FeatureId::VOLATILE_WRITE_CACHE
        | FeatureId::NUMBER_OF_QUEUES
        | FeatureId::INTERRUPT_COALESCING
        | FeatureId::INTERRUPT_VECTOR_CONFIG
        | FeatureId::WRITE_ATOMICITY
        | FeatureId::ASYNC_EVENT_CONFIG
        | FeatureId::KEEP_ALIVE_TIMER => DataLength::None,
        _ => DataLength::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_lengths_follow_the_command_fields() {
        let r = Command::rw(NvmOpcode::READ, 1, 0, 3, false);
        assert_eq!(io_data_length(&r), DataLength::Blocks(4));
        let w = Command::rw(NvmOpcode::WRITE, 1, 0, 0xFFFF, false);
        assert_eq!(io_data_length(&w), DataLength::Blocks(65536));
        assert_eq!(io_data_length(&Command::flush(1)), DataLength::None);
        assert_eq!(
            io_data_length(&Command::write_zeroes(1, 0, 7, false)),
            DataLength::None
        );
        assert_eq!(
            io_data_length(&Command::dataset_management(1, 2, true)),
            DataLength::Bytes(48)
        );
        let mut vendor = Command::flush(1);
        vendor.set_cdw(0, 0x81);
        assert_eq!(io_data_length(&vendor), DataLength::Unknown);
    }

    #[test]
    fn admin_lengths_follow_the_command_fields() {
        assert_eq!(
            admin_data_length(&Command::identify(1, 0, 0, 0)),
            DataLength::Bytes(4096)
        );
        // NUMDL = 0x7F (128 dwords), NUMDU = 1: (0x1_007F + 1) × 4 bytes.
        let mut glp = Command::get_log_page(2, 0, 128, 0, 0, false);
        glp.set_cdw(11, glp.cdw11() | 1);
        assert_eq!(
            admin_data_length(&glp),
            DataLength::Bytes((0x1_007F + 1) * 4)
        );
        assert_eq!(
            admin_data_length(&Command::get_features(0x03, 0, 1, 0)),
            DataLength::Bytes(4096)
        );
        assert_eq!(
            admin_data_length(&Command::get_features(0x03, 3, 1, 0)),
            DataLength::None
        );
        assert_eq!(
            admin_data_length(&Command::set_features(0x0D, false, 0, 1)),
            DataLength::Managed
        );
        assert_eq!(
            admin_data_length(&Command::create_io_sq(1, 1, 0x1000, 1, 0)),
            DataLength::Managed
        );
        assert_eq!(
            admin_data_length(&Command::format_nvm(1, 0, 0)),
            DataLength::None
        );
    }
}
