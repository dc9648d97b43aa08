//! Helpers shared by the key-spec test files.

pub(super) fn argv<'a>(args: &[&'a str]) -> Vec<&'a [u8]> {
    args.iter().map(|a| a.as_bytes()).collect()
}
