//! Collection rules: which workstations a rule-based collection holds,
//! decided from the attributes their agents report.
//!
//! Grammar (keywords case-insensitive, values case-sensitive):
//!
//! ```text
//! rule  := or
//! or    := and ("or" and)*
//! and   := unary ("and" unary)*
//! unary := "not" unary | "(" or ")" | attr ("=" | "!=") value
//! attr  := "name" | "site" | "os" | "arch" | "hostname" | "tag." key
//! value := word | "double quoted" | 'single quoted'
//! ```
//!
//! Example: `tag.role = kiosk and os = linux`. A tag the agent does not have
//! is never equal to anything (and so always unequal).

use crate::{Error, Result};
use std::collections::BTreeMap;

/// Who a collection holds: listed workstations, or a rule over attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Listed workstations, by name.
    Listed(Vec<String>),
    /// A rule over attributes.
    Rule(Rule),
}

impl Membership {
    /// From a collection's definition (a list wins over a rule; neither:
    /// nobody).
    pub fn new(machines: Option<Vec<String>>, rule: Option<&str>) -> Result<Membership> {
        match (machines, rule) {
            (Some(machines), _) => Ok(Membership::Listed(machines)),
            (None, Some(rule)) => Ok(Membership::Rule(Rule::parse(rule)?)),
            (None, None) => Ok(Membership::Listed(Vec::new())),
        }
    }

    /// Whether the agent with these attributes belongs.
    pub fn matches(&self, agent: &AgentAttributes) -> bool {
        match self {
            Membership::Listed(machines) => machines.contains(&agent.name),
            Membership::Rule(rule) => rule.matches(agent),
        }
    }
}

/// What an agent reports about its workstation, which rules select on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentAttributes {
    /// The agent's name.
    pub name: String,
    /// Its site code.
    pub site: String,
    /// Operating system (`linux`, `windows`, `macos`).
    pub os: String,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Host name.
    pub hostname: String,
    /// Administrator-given tags.
    pub tags: BTreeMap<String, String>,
}

impl AgentAttributes {
    fn get(&self, attribute: &Attribute) -> Option<&str> {
        match attribute {
            Attribute::Name => Some(&self.name),
            Attribute::Site => Some(&self.site),
            Attribute::Os => Some(&self.os),
            Attribute::Arch => Some(&self.arch),
            Attribute::Hostname => Some(&self.hostname),
            Attribute::Tag(key) => self.tags.get(key).map(String::as_str),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Attribute {
    Name,
    Site,
    Os,
    Arch,
    Hostname,
    Tag(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Expr {
    Equals(Attribute, String),
    NotEquals(Attribute, String),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

impl Expr {
    fn matches(&self, agent: &AgentAttributes) -> bool {
        match self {
            Expr::Equals(attribute, value) => agent.get(attribute) == Some(value.as_str()),
            Expr::NotEquals(attribute, value) => agent.get(attribute) != Some(value.as_str()),
            Expr::Not(inner) => !inner.matches(agent),
            Expr::And(left, right) => left.matches(agent) && right.matches(agent),
            Expr::Or(left, right) => left.matches(agent) || right.matches(agent),
        }
    }
}

/// A parsed collection rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    text: String,
    expr: Expr,
}

/// Longest rule accepted.
pub const MAX_RULE_LEN: usize = 4096;

impl Rule {
    /// Parses a rule; the error names the position and what was expected.
    pub fn parse(text: &str) -> Result<Rule> {
        if text.len() > MAX_RULE_LEN {
            return Err(invalid(text, 0, "rule is longer than 4096 characters"));
        }
        let tokens = tokenize(text)?;
        let mut parser = Parser {
            text,
            tokens: &tokens,
            next: 0,
            depth: 0,
        };
        let expr = parser.or()?;
        if let Some(token) = parser.peek() {
            return Err(invalid(
                text,
                token.at,
                "expected 'and', 'or' or the end of the rule",
            ));
        }
        Ok(Rule {
            text: text.to_owned(),
            expr,
        })
    }

    /// Whether an agent belongs.
    pub fn matches(&self, agent: &AgentAttributes) -> bool {
        self.expr.matches(agent)
    }

    /// The rule as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn invalid(text: &str, at: usize, reason: &str) -> Error {
    Error::InvalidRule {
        rule: text.to_owned(),
        position: at,
        reason: reason.to_owned(),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Word(String),
    Quoted(String),
    Equals,
    NotEquals,
    Open,
    Close,
}

#[derive(Clone, Debug)]
struct Token {
    kind: Kind,
    at: usize,
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')
}

fn tokenize(text: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' => {
                chars.next();
                let kind = if c == '(' { Kind::Open } else { Kind::Close };
                tokens.push(Token { kind, at });
            }
            '=' => {
                chars.next();
                tokens.push(Token {
                    kind: Kind::Equals,
                    at,
                });
            }
            '!' => {
                chars.next();
                if chars.next().map(|(_, c)| c) != Some('=') {
                    return Err(invalid(text, at, "expected '!='"));
                }
                tokens.push(Token {
                    kind: Kind::NotEquals,
                    at,
                });
            }
            '"' | '\'' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => break,
                        Some((_, other)) => value.push(other),
                        None => return Err(invalid(text, at, "unterminated quoted value")),
                    }
                }
                tokens.push(Token {
                    kind: Kind::Quoted(value),
                    at,
                });
            }
            c if is_word_char(c) => {
                let mut word = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if !is_word_char(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token {
                    kind: Kind::Word(word),
                    at,
                });
            }
            _ => return Err(invalid(text, at, "unexpected character")),
        }
    }
    Ok(tokens)
}

/// Deepest nesting accepted, so that a hostile rule cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    text: &'a str,
    tokens: &'a [Token],
    next: usize,
    depth: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.next)
    }

    fn keyword(&mut self, keyword: &str) -> bool {
        match self.peek() {
            Some(Token {
                kind: Kind::Word(word),
                ..
            }) if word.eq_ignore_ascii_case(keyword) => {
                self.next += 1;
                true
            }
            _ => false,
        }
    }

    fn end(&self) -> usize {
        self.peek().map_or(self.text.len(), |token| token.at)
    }

    fn or(&mut self) -> Result<Expr> {
        let mut left = self.and()?;
        while self.keyword("or") {
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr> {
        let mut left = self.unary()?;
        while self.keyword("and") {
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(invalid(self.text, self.end(), "rule is nested too deeply"));
        }
        let result = self.unary_inner();
        self.depth -= 1;
        result
    }

    fn unary_inner(&mut self) -> Result<Expr> {
        if self.keyword("not") {
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if let Some(Token {
            kind: Kind::Open, ..
        }) = self.peek()
        {
            self.next += 1;
            let inner = self.or()?;
            match self.peek() {
                Some(Token {
                    kind: Kind::Close, ..
                }) => {
                    self.next += 1;
                    return Ok(inner);
                }
                _ => return Err(invalid(self.text, self.end(), "expected ')'")),
            }
        }
        let attribute = self.attribute()?;
        let negated = match self.peek().map(|token| &token.kind) {
            Some(Kind::Equals) => false,
            Some(Kind::NotEquals) => true,
            _ => return Err(invalid(self.text, self.end(), "expected '=' or '!='")),
        };
        self.next += 1;
        let value = match self.peek() {
            Some(Token {
                kind: Kind::Word(value) | Kind::Quoted(value),
                ..
            }) => value.clone(),
            _ => return Err(invalid(self.text, self.end(), "expected a value")),
        };
        self.next += 1;
        Ok(if negated {
            Expr::NotEquals(attribute, value)
        } else {
            Expr::Equals(attribute, value)
        })
    }

    fn attribute(&mut self) -> Result<Attribute> {
        let at = self.end();
        let Some(Token {
            kind: Kind::Word(word),
            ..
        }) = self.peek()
        else {
            return Err(invalid(
                self.text,
                at,
                "expected an attribute (name, site, os, arch, hostname, tag.KEY)",
            ));
        };
        let attribute = match word.to_ascii_lowercase().as_str() {
            "name" => Attribute::Name,
            "site" => Attribute::Site,
            "os" => Attribute::Os,
            "arch" => Attribute::Arch,
            "hostname" => Attribute::Hostname,
            lower if lower.starts_with("tag.") && word.len() > 4 => {
                Attribute::Tag(word[4..].to_owned())
            }
            _ => {
                return Err(invalid(
                    self.text,
                    at,
                    "unknown attribute: use name, site, os, arch, hostname or tag.KEY",
                ))
            }
        };
        self.next += 1;
        Ok(attribute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(os: &str, role: Option<&str>) -> AgentAttributes {
        AgentAttributes {
            name: "ws1".into(),
            site: "CEN".into(),
            os: os.into(),
            arch: "x86_64".into(),
            hostname: "ws1.example".into(),
            tags: role
                .map(|r| [("role".to_owned(), r.to_owned())].into())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn the_issue_example_selects_linux_kiosks() {
        let rule = Rule::parse("tag.role = kiosk and os = linux").unwrap();
        assert!(rule.matches(&agent("linux", Some("kiosk"))));
        assert!(!rule.matches(&agent("windows", Some("kiosk"))));
        assert!(!rule.matches(&agent("linux", None)));
    }

    #[test]
    fn precedence_parentheses_and_negation() {
        let rule = Rule::parse("os = windows or tag.role = kiosk and not site = 'P01'").unwrap();
        assert!(rule.matches(&agent("windows", None)));
        assert!(rule.matches(&agent("linux", Some("kiosk"))));
        let rule = Rule::parse("(os = windows OR os = linux) AND tag.role != kiosk").unwrap();
        assert!(rule.matches(&agent("linux", None)));
        assert!(!rule.matches(&agent("linux", Some("kiosk"))));
    }

    #[test]
    fn bad_rules_say_where_and_what() {
        for (text, position) in [
            ("os =", 4),
            ("os linux", 3),
            ("colour = red", 0),
            ("(os = linux", 11),
            ("os = linux and", 14),
            ("os = linux extra", 11),
            ("os = 'linux", 5),
            ("os ! linux", 3),
        ] {
            match Rule::parse(text) {
                Err(Error::InvalidRule { position: at, .. }) => assert_eq!(at, position, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let deep = format!("{}os = linux{}", "(".repeat(100), ")".repeat(100));
        assert!(Rule::parse(&deep).is_err());
    }
}
