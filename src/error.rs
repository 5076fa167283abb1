//! The one classification of errors that the gRPC layer maps to status codes.
//!
//! Every module has its own `thiserror` enum and says, through [`Classify`],
//! which kind each variant is; `cri::error::status` is the single mapping of
//! those kinds to `tonic::Status`.

/// What a caller can do about an error: the gRPC code families the CRI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    DeadlineExceeded,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    Internal,
}

pub trait Classify: std::error::Error {
    fn kind(&self) -> Kind;
}

/// The error and its sources as one line: `a: b: c`.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        // thiserror messages often embed their source already.
        if !text.ends_with(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// `text` cut to at most `max` bytes (at a character boundary), with how
/// much was cut: error messages and logs may quote what a client sent,
/// which can be megabytes.
pub fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes cut)", &text[..end], text.len() - end).into()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cut_keeps_short_text_and_whole_characters() {
        assert_eq!(super::cut("abc", 3), "abc");
        assert_eq!(super::cut("abcd", 3), "abc... (1 bytes cut)");
        // "é" is two bytes: a cut inside it moves before it.
        assert_eq!(super::cut("aé", 2), "a... (2 bytes cut)");
    }
}
