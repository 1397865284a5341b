//! Cutting a request body into one byte range per event, with line numbers.
//!
//! Splitting is one sequential pass over the body, far cheaper than parsing;
//! the ranges it yields, a chunk at a time, are then parsed in parallel. Both splitters only
//! find boundaries: whether a range is a valid event is the parser's call,
//! so a broken element costs that element alone.

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
///
/// An iterator, not a vector: the parser takes a chunk of items at a time,
/// so the index of a body of millions of tiny lines never exists whole
/// (as a vector it took 32 bytes per 3-byte `{}` line).
pub(crate) struct NdjsonItems<'a> {
    body: &'a [u8],
    /// Start of the next line; past the end once the last line is out.
    pos: usize,
    line: usize,
}

impl<'a> NdjsonItems<'a> {
    pub(crate) fn new(body: &'a [u8]) -> NdjsonItems<'a> {
        NdjsonItems { body, pos: 0, line: 1 }
    }
}

impl Iterator for NdjsonItems<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        while self.pos <= self.body.len() {
            let (start, line) = (self.pos, self.line);
            let end = memchr::memchr(b'\n', &self.body[start..]).map_or(self.body.len(), |i| start + i);
            self.pos = end + 1;
            self.line += 1;
            if !self.body[start..end].iter().all(u8::is_ascii_whitespace) {
                return Some(Item { start, end, line, col: 1 });
            }
        }
        None
    }
}

/// A JSON array body: one item per top-level element. An empty element
/// (`[1,,2]`, a trailing comma) is an empty item, which the parser rejects.
/// A defect of the array itself is in [`ArrayItems::error`] once the
/// iterator is done.
///
/// Elements are found by tracking string literals and bracket depth; the
/// elements themselves are not checked here.
pub(crate) struct ArrayItems<'a> {
    scanner: Scanner<'a>,
    state: ArrayState,
    pub(crate) error: Option<StructureError>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ArrayState {
    Start,
    Elements,
    Done,
}

impl<'a> ArrayItems<'a> {
    pub(crate) fn new(body: &'a [u8]) -> ArrayItems<'a> {
        ArrayItems { scanner: Scanner { body, pos: 0, line: 1, line_start: 0 }, state: ArrayState::Start, error: None }
    }

    fn fail(&mut self, what: &str) -> Option<Item> {
        self.error = Some(self.scanner.error(what));
        self.state = ArrayState::Done;
        None
    }

    /// After the closing `]`: only whitespace may follow.
    fn finish(&mut self) -> Option<Item> {
        self.state = ArrayState::Done;
        self.scanner.skip_ws();
        if self.scanner.peek().is_some() {
            return self.fail("unexpected characters after the array");
        }
        None
    }
}

impl Iterator for ArrayItems<'_> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        let s = &mut self.scanner;
        match self.state {
            ArrayState::Done => return None,
            ArrayState::Start => {
                s.skip_ws();
                match s.peek() {
                    None => {
                        self.state = ArrayState::Done;
                        return None;
                    }
                    Some(b'[') => s.pos += 1,
                    Some(_) => return self.fail("expected a JSON array of event objects"),
                }
                s.skip_ws();
                if s.peek() == Some(b']') {
                    s.pos += 1;
                    return self.finish();
                }
                self.state = ArrayState::Elements;
            }
            ArrayState::Elements => {}
        }
        let s = &mut self.scanner;
        s.skip_ws();
        if s.peek().is_none() {
            return self.fail("unterminated array: expected a value or `]`");
        }
        let (start, line, col) = (s.pos, s.line, s.pos - s.line_start + 1);
        s.scan_element();
        let mut end = s.pos;
        while end > start && s.body[end - 1].is_ascii_whitespace() {
            end -= 1;
        }
        let item = Item { start, end, line, col };
        match s.peek() {
            Some(b',') => s.pos += 1,
            Some(b']') => {
                s.pos += 1;
                self.finish();
            }
            _ => {
                self.fail("unterminated array: expected `,` or `]`");
            }
        }
        Some(item)
    }
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

/// Every item of an NDJSON body, for tests.
#[cfg(test)]
pub(crate) fn ndjson_items(body: &[u8]) -> Vec<Item> {
    NdjsonItems::new(body).collect()
}

/// Every item of an array body and its defect, for tests.
#[cfg(test)]
pub(crate) fn array_items(body: &[u8]) -> (Vec<Item>, Option<StructureError>) {
    let mut items = ArrayItems::new(body);
    let all = items.by_ref().collect();
    (all, items.error)
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
