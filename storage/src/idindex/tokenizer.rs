//! How a granule's id values reach tantivy as one text: each value as
//! `{byte length}:{value}`, back to back. A length prefix, not a separator,
//! because ids are arbitrary strings (a JSON id may hold any character,
//! NUL and newlines included); the tokenizer splits the text back into the
//! exact values, one token each.

use std::fmt::Write;

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// Appends `value` to a granule's text.
pub(super) fn push_value(text: &mut String, value: &str) {
    // Writing to a String cannot fail.
    let _ = write!(text, "{}:{value}", value.len());
}

/// Splits a text made by [`push_value`] into its values.
#[derive(Clone, Default)]
pub(super) struct IdTokenizer {
    token: Token,
}

pub(super) struct IdTokenStream<'a> {
    text: &'a str,
    pos: usize,
    token: &'a mut Token,
}

impl Tokenizer for IdTokenizer {
    type TokenStream<'a> = IdTokenStream<'a>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> IdTokenStream<'a> {
        self.token.reset();
        IdTokenStream { text, pos: 0, token: &mut self.token }
    }
}

impl TokenStream for IdTokenStream<'_> {
    fn advance(&mut self) -> bool {
        let Some(rest) = self.text.get(self.pos..) else { return false };
        let Some(colon) = rest.find(':') else { return false };
        let Ok(len) = rest[..colon].parse::<usize>() else { return false };
        let start = self.pos + colon + 1;
        let Some(value) = start.checked_add(len).and_then(|end| self.text.get(start..end)) else { return false };
        self.token.text.clear();
        self.token.text.push_str(value);
        self.token.offset_from = start;
        self.token.offset_to = start + len;
        self.token.position = self.token.position.wrapping_add(1);
        self.pos = start + len;
        true
    }

    fn token(&self) -> &Token {
        self.token
    }

    fn token_mut(&mut self) -> &mut Token {
        self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(values: &[&str]) -> Vec<String> {
        let mut text = String::new();
        for v in values {
            push_value(&mut text, v);
        }
        let mut tokenizer = IdTokenizer::default();
        let mut stream = tokenizer.token_stream(&text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }

    #[test]
    fn values_come_back_exactly_whatever_they_hold() {
        let values = ["imp-1", "", "12:x", "a:b:c", "日本", "nul\0and\nnewline", "3:abc"];
        assert_eq!(split(&values), values);
        assert!(split(&[]).is_empty());
    }
}
