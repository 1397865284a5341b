//! What one statement may ask of the engine before it is parsed: how many
//! operators and how deep its nesting. The parser, the binder, expression
//! evaluation and the syntax tree's own drop all recurse once per level of
//! an expression, and `a + 1 + 1 + …` is as deep as it is long; these
//! limits, checked on the token stream (a loop, no recursion), bound that
//! depth, and [`QUERY_STACK_BYTES`] is the stack every statement runs on,
//! sized for it. A statement past a limit is refused with
//! [`QueryError::TooComplex`], naming the limit and where it was passed.

use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::bind::pos;
use crate::error::{QueryError, Result};

/// Default of [`crate::QueryOptions::max_operators`].
pub const MAX_OPERATORS: usize = 4_096;
/// Default of [`crate::QueryOptions::max_nesting`].
pub const MAX_NESTING: usize = 64;
/// The stack a statement is parsed, bound and run on (reserved address
/// space; only what a statement uses is ever touched). Sized for a
/// statement at both limits in a debug build.
pub const QUERY_STACK_BYTES: usize = 256 << 20;

/// Refuses `sql` if it holds more than `max_operators` operators
/// ([`is_operator`]) or nests parentheses and `CASE … END` deeper than
/// `max_nesting`. Tokenizer errors are left to the parser to report.
pub(crate) fn check(sql: &str, max_operators: usize, max_nesting: usize) -> Result<()> {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize_with_location() else {
        return Ok(());
    };
    let (mut operators, mut depth) = (0usize, 0usize);
    for (i, t) in tokens.iter().enumerate() {
        let opens = matches!(&t.token, Token::LParen) || keyword(&t.token) == Some(Keyword::CASE);
        let closes = matches!(&t.token, Token::RParen) || keyword(&t.token) == Some(Keyword::END);
        if opens {
            depth += 1;
            if depth > max_nesting {
                return Err(QueryError::TooComplex {
                    message: format!("parentheses and CASE nested more than {max_nesting} deep (limit max_nesting)"),
                    position: pos(t.span),
                });
            }
        } else if closes {
            depth = depth.saturating_sub(1);
        }
        if is_operator(&tokens, i) {
            operators += 1;
            if operators > max_operators {
                return Err(QueryError::TooComplex {
                    message: format!(
                        "more than {max_operators} operators in one statement (limit max_operators); \
                         a long OR of equalities is an IN list"
                    ),
                    position: pos(t.span),
                });
            }
        }
    }
    Ok(())
}

fn keyword(t: &Token) -> Option<Keyword> {
    match t {
        Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
        _ => None,
    }
}

/// Operator symbols, and the keywords that build expressions: each may
/// add a level to an expression. (Names, literals, punctuation and the
/// `*` of `count(*)` do not.)
fn is_operator(tokens: &[TokenWithSpan], i: usize) -> bool {
    match &tokens[i].token {
        Token::Whitespace(_)
        | Token::EOF
        | Token::Comma
        | Token::Period
        | Token::SemiColon
        | Token::LParen
        | Token::RParen
        | Token::Number(..)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::NationalStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Placeholder(_) => false,
        Token::Mul => {
            !(neighbour(tokens, i, -1) == Some(&Token::LParen) && neighbour(tokens, i, 1) == Some(&Token::RParen))
        }
        Token::Word(w) => {
            w.quote_style.is_none()
                && matches!(
                    w.keyword,
                    Keyword::AND
                        | Keyword::OR
                        | Keyword::NOT
                        | Keyword::LIKE
                        | Keyword::ILIKE
                        | Keyword::SIMILAR
                        | Keyword::BETWEEN
                        | Keyword::IS
                        | Keyword::IN
                        | Keyword::CASE
                        | Keyword::WHEN
                        | Keyword::CAST
                        | Keyword::INTERVAL
                        | Keyword::AT
                )
        }
        _ => true,
    }
}

/// The nearest token before (`step` -1) or after (1) `i` that is not whitespace.
fn neighbour(tokens: &[TokenWithSpan], i: usize, step: isize) -> Option<&Token> {
    let mut j = i;
    loop {
        j = j.checked_add_signed(step)?;
        match &tokens.get(j)?.token {
            Token::Whitespace(_) => {}
            t => return Some(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_operators_not_operands() {
        let list = format!("SELECT count(*) FROM events WHERE ad_id IN ({})", vec!["'x'"; 10_000].join(", "));
        assert!(check(&list, 1, 4).is_ok(), "an IN list of literals is shallow");
        assert!(check("SELECT type, count( * ) FROM events", 0, 4).is_ok(), "names and count(*) are no operators");
        assert!(check("SELECT 2 * 3 FROM events", 0, 4).is_err());
        let e = check("SELECT a + 1 + 1 FROM events", 1, 4).expect_err("2 operators");
        assert!(matches!(e, QueryError::TooComplex { .. }), "{e}");
        assert!(check("SELECT ((a)) FROM events", 10, 2).is_ok());
        let e = check("SELECT (((a))) FROM events", 10, 2).expect_err("3 deep");
        assert_eq!(e.position().map(|p| p.column), Some(10));
        let e = check("SELECT CASE WHEN CASE WHEN a THEN 1 END THEN 1 END FROM t", 100, 1).expect_err("CASE in CASE");
        assert!(e.to_string().contains("nested"), "{e}");
    }
}
