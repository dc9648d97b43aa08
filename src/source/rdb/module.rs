//! Module data (module values and module aux fields): its opcode-framed
//! payload cannot be decoded without the module, so it is always skipped.

use std::io::Read;

use super::error::RdbError;
use super::format::{
    MODULE_OP_DOUBLE, MODULE_OP_EOF, MODULE_OP_FLOAT, MODULE_OP_SINT, MODULE_OP_STRING,
    MODULE_OP_UINT,
};
use super::reader::RdbReader;
use super::types::module_type_name;

pub(super) fn module_pre_ga_unsupported() -> RdbError {
    RdbError::Unsupported(
        "module value in the Redis 4.0 RC1 format (type 6) cannot be skipped without the module"
            .to_string(),
    )
}

impl<R: Read> RdbReader<R> {
    pub(super) fn skip_module_value(&mut self, module_id: u64) -> Result<(), RdbError> {
        loop {
            match self.read_length()? {
                MODULE_OP_EOF => return Ok(()),
                MODULE_OP_SINT | MODULE_OP_UINT => {
                    self.read_len()?;
                }
                MODULE_OP_FLOAT => {
                    self.src.array::<4>()?;
                }
                MODULE_OP_DOUBLE => {
                    self.src.array::<8>()?;
                }
                MODULE_OP_STRING => {
                    self.skip_string()?;
                }
                other => {
                    return Err(self.corrupt(format!(
                        "unknown module value opcode {other} in data of module {}",
                        module_type_name(module_id)
                    )));
                }
            }
        }
    }
}
