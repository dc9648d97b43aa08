//! [`RdbError`]: every way decoding an RDB stream can fail.

use std::io;

/// Why an RDB stream could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RdbError {
    /// The underlying reader failed (other than by ending early).
    #[error("I/O error while reading the RDB stream: {0}")]
    Io(io::Error),
    /// The stream ended before the RDB was complete.
    #[error(
        "RDB stream ended unexpectedly: the snapshot transfer was truncated before the EOF opcode and checksum"
    )]
    UnexpectedEof,
    /// The stream does not start with "REDIS" or "VALKEY" and a version number.
    #[error("not an RDB stream: it must start with \"REDIS\" or \"VALKEY\" and a version number")]
    BadMagic,
    /// The RDB version is outside the range this parser understands.
    #[error("unsupported RDB version {0}")]
    UnsupportedVersion(u32),
    /// A value type byte this parser does not know.
    #[error(
        "unknown RDB value type {type_byte} (0x{type_byte:02x}) in a version {version} RDB stream"
    )]
    UnknownType {
        /// The type byte read from the stream.
        type_byte: u8,
        /// RDB version of the stream.
        version: u32,
    },
    /// An opcode this parser does not know.
    #[error("unknown RDB opcode {opcode} (0x{opcode:02x}) in a version {version} RDB stream")]
    UnknownOpcode {
        /// The opcode byte read from the stream.
        opcode: u8,
        /// RDB version of the stream.
        version: u32,
    },
    /// The data is malformed; the message names what and where.
    #[error("corrupt RDB data: {0}")]
    Corrupt(String),
    /// Well-formed data this parser deliberately does not decode.
    #[error("unsupported RDB content: {0}")]
    Unsupported(String),
    /// The CRC-64 trailer does not match the received bytes.
    #[error(
        "RDB checksum mismatch: the stream's trailer says {expected:#018x}, the received bytes give {actual:#018x}"
    )]
    ChecksumMismatch {
        /// Checksum stored in the RDB trailer.
        expected: u64,
        /// Checksum computed over the bytes actually received.
        actual: u64,
    },
}

impl From<io::Error> for RdbError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            RdbError::UnexpectedEof
        } else {
            RdbError::Io(e)
        }
    }
}
