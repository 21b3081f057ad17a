//! How bytes travel in the REST API's JSON and URLs: base64 fields, text-or-base64 outputs, path
//! segments.

use crate::error::Error;

/// Decodes a base64 field (standard alphabet, padding optional).
pub fn base64_field(value: &str, field: &str) -> Result<Vec<u8>, Error> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|error| Error::invalid_field(field, format!("is not valid base64: {error}")))
}

/// Encodes bytes as standard padded base64.
pub fn to_base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes as an answer carries them: `(text, None)` when they are UTF-8, else `(None, base64)`.
pub fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(to_base64(bytes))),
    }
}

/// Characters a path segment keeps as they are; every other byte is percent-encoded.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` as one path segment of a URL (a file name or task ID may hold spaces, slashes,
/// anything).
pub fn path_segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, PATH_SEGMENT).to_string()
}
