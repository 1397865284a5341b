//! Cutting a request body into one byte range per event, with line numbers.
//!
//! Splitting is one sequential pass over the body, far cheaper than parsing;
//! the ranges it yields are then parsed in parallel. Both splitters only
//! find boundaries: whether a range is a valid event is the parser's call,
//! so a broken element costs that element alone.

use memchr::memchr_iter;

/// One event's bytes in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Item {
    pub start: usize,
    pub end: usize,
    /// 1-based line of `start` in the body.
    pub line: usize,
    /// 1-based column of `start` in its line (bytes).
    pub col: usize,
}

/// A problem with the body's structure outside any one element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StructureError {
    pub line: usize,
    pub message: String,
}

/// NDJSON: one item per line that is not blank. `\r\n` needs no special
/// case, since JSON treats `\r` as whitespace.
pub(crate) fn ndjson_items(body: &[u8]) -> Vec<Item> {
    // Sized exactly: grown by doubling, a body of millions of tiny lines
    // held the old and the new vector at once, 25 times the body's size.
    let mut items = Vec::with_capacity(memchr_iter(b'\n', body).count() + 1);
    let mut start = 0;
    let mut line = 1;
    let mut push = |start: usize, end: usize, line: usize| {
        if !body[start..end].iter().all(u8::is_ascii_whitespace) {
            items.push(Item { start, end, line, col: 1 });
        }
    };
    for nl in memchr_iter(b'\n', body) {
        push(start, nl, line);
        start = nl + 1;
        line += 1;
    }
    push(start, body.len(), line);
    items
}

/// A JSON array body: one item per top-level element. An empty element
/// (`[1,,2]`, a trailing comma) is an empty item, which the parser rejects.
///
/// Elements are found by tracking string literals and bracket depth; the
/// elements themselves are not checked here.
pub(crate) fn array_items(body: &[u8]) -> (Vec<Item>, Option<StructureError>) {
    let mut s = Scanner { body, pos: 0, line: 1, line_start: 0 };
    let mut items = Vec::with_capacity(body.len() / 256 + 1);
    s.skip_ws();
    match s.peek() {
        None => return (items, None),
        Some(b'[') => s.pos += 1,
        Some(_) => return (items, Some(s.error("expected a JSON array of event objects"))),
    }
    s.skip_ws();
    if s.peek() == Some(b']') {
        s.pos += 1;
    } else {
        loop {
            s.skip_ws();
            if s.peek().is_none() {
                return (items, Some(s.error("unterminated array: expected a value or `]`")));
            }
            let (start, line, col) = (s.pos, s.line, s.pos - s.line_start + 1);
            s.scan_element();
            let mut end = s.pos;
            while end > start && body[end - 1].is_ascii_whitespace() {
                end -= 1;
            }
            items.push(Item { start, end, line, col });
            match s.peek() {
                Some(b',') => s.pos += 1,
                Some(b']') => {
                    s.pos += 1;
                    break;
                }
                _ => return (items, Some(s.error("unterminated array: expected `,` or `]`"))),
            }
        }
    }
    s.skip_ws();
    if s.peek().is_some() {
        return (items, Some(s.error("unexpected characters after the array")));
    }
    (items, None)
}

struct Scanner<'a> {
    body: &'a [u8],
    pos: usize,
    line: usize,
    line_start: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.body.get(self.pos).copied()
    }

    fn error(&self, what: &str) -> StructureError {
        let col = self.pos - self.line_start + 1;
        StructureError { line: self.line, message: format!("{what} at line {} column {col}", self.line) }
    }

    fn newline(&mut self) {
        self.line += 1;
        self.line_start = self.pos + 1;
    }

    fn skip_ws(&mut self) {
        while let Some(b) = self.peek().filter(u8::is_ascii_whitespace) {
            if b == b'\n' {
                self.newline();
            }
            self.pos += 1;
        }
    }

    /// Advances to the `,` or `]` that ends the element at `pos`, or to the end.
    fn scan_element(&mut self) {
        let mut depth = 0usize;
        while let Some(b) = self.peek() {
            match b {
                b'"' => {
                    self.pos += 1;
                    self.scan_string();
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b']' | b',' if depth == 0 => return,
                b'\n' => self.newline(),
                _ => {}
            }
            self.pos += 1;
        }
    }

    /// Advances past the closing quote of the string whose body starts at `pos`.
    fn scan_string(&mut self) {
        while let Some(b) = self.peek() {
            match b {
                b'"' => {
                    self.pos += 1;
                    return;
                }
                b'\\' => {
                    self.pos += 1;
                    if self.peek() == Some(b'\n') {
                        self.newline();
                    }
                }
                b'\n' => self.newline(),
                _ => {}
            }
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(body: &'a [u8], items: &[Item]) -> Vec<(&'a str, usize, usize)> {
        items.iter().map(|i| (std::str::from_utf8(&body[i.start..i.end]).expect("utf8"), i.line, i.col)).collect()
    }

    #[test]
    fn ndjson_skips_blank_lines_and_keeps_numbers() {
        let body = b"{\"a\":1}\r\n\n  \r\n{\"b\":2}\n\t\n{\"c\":3}";
        let items = ndjson_items(body);
        assert_eq!(texts(body, &items), [("{\"a\":1}\r", 1, 1), ("{\"b\":2}", 4, 1), ("{\"c\":3}", 6, 1)]);
        assert!(ndjson_items(b"").is_empty());
        assert!(ndjson_items(b"\n\n").is_empty());
    }

    #[test]
    fn array_elements_with_positions() {
        let body = b"[\n  {\"a\":\"x,]}\\\"\"},\n  {\"b\":[1,{\"c\":2}]} ,{}\n]\n";
        let (items, err) = array_items(body);
        assert_eq!(err, None);
        assert_eq!(
            texts(body, &items),
            [("{\"a\":\"x,]}\\\"\"}", 2, 3), ("{\"b\":[1,{\"c\":2}]}", 3, 3), ("{}", 3, 22)]
        );
    }

    #[test]
    fn array_edge_cases() {
        assert_eq!(array_items(b""), (vec![], None));
        assert_eq!(array_items(b" [ ] "), (vec![], None));
        let (items, err) = array_items(b"[{},]");
        assert_eq!(items.len(), 2);
        assert_eq!((items[1].start, items[1].end), (4, 4), "trailing comma yields an empty element");
        assert_eq!(err, None);

        let (items, err) = array_items(b"{\"a\":1}");
        assert!(items.is_empty());
        assert_eq!(err.expect("error").message, "expected a JSON array of event objects at line 1 column 1");

        let (items, err) = array_items(b"[{},\n{\"a\":");
        assert_eq!(items.len(), 2);
        assert_eq!(err.expect("error").line, 2);

        let (items, err) = array_items(b"[{}] x");
        assert_eq!(items.len(), 1);
        assert_eq!(err.expect("error").message, "unexpected characters after the array at line 1 column 6");

        let (items, err) = array_items(b"[");
        assert!(items.is_empty());
        assert!(err.is_some());
    }
}
