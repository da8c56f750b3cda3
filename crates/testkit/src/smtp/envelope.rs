//! The SMTP envelope: MAIL FROM and RCPT TO with their parameters
//! (RFC 5321 §4.1.1.2-3, RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531
//! SMTPUTF8, RFC 3461 DSN).

use super::events::SmtpEvent;
use super::session::{Greeted, Session, Transaction, GREET_FIRST, NEED_MAIL, TOO_BIG};

const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required";

impl Session {
    pub(super) fn mail(&mut self, args: Option<&str>) -> String {
        if self.greeted == Greeted::No {
            return GREET_FIRST.to_owned();
        }
        if self.script().require_auth && self.auth_user.is_none() {
            return AUTH_REQUIRED.to_owned();
        }
        if self.txn.is_some() {
            return "503 5.5.1 Nested MAIL command".to_owned();
        }
        let Some(verbatim) = args.and_then(|a| strip_prefix_ci(a, "FROM:")) else {
            return "501 5.5.4 Syntax: MAIL FROM:<address>".to_owned();
        };
        let Some((address, params)) = parse_path(verbatim) else {
            return "501 5.5.4 Syntax: MAIL FROM:<address>".to_owned();
        };
        let answer = match self.script().mail_reply.clone() {
            Some(answer) => answer,
            None => match self.check_mail_params(&params) {
                Ok(()) => "250 2.1.0 Ok".to_owned(),
                Err(answer) => return answer,
            },
        };
        if answer.starts_with('2') {
            self.txn = Some(Transaction {
                mail_from: address.to_owned(),
                rcpts: Vec::new(),
                chunks: None,
            });
            self.record(SmtpEvent::MailFrom(verbatim.to_owned()));
        }
        answer
    }

    /// A parameter is only valid if EHLO advertised its extension
    /// (RFC 5321 §4.1.1.11; unknown ones get 555).
    fn check_mail_params(&self, params: &[&str]) -> Result<(), String> {
        for param in params {
            let (keyword, value) = match param.split_once('=') {
                Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
                None => (param.to_ascii_uppercase(), None),
            };
            let extension = match keyword.as_str() {
                "SIZE" => "SIZE",
                "BODY" => "8BITMIME",
                "SMTPUTF8" => "SMTPUTF8",
                "RET" | "ENVID" => "DSN",
                "AUTH" => "AUTH",
                _ => return Err(unsupported_param(&keyword)),
            };
            let advertised = self.greeted == Greeted::Ehlo
                && match extension {
                    "AUTH" => self.auth_advertised(),
                    other => self.script().has_extension(other),
                };
            if !advertised {
                return Err(unsupported_param(&keyword));
            }
            match keyword.as_str() {
                "SIZE" => {
                    let Some(size) = value.and_then(|v| v.parse::<usize>().ok()) else {
                        return Err("501 5.5.4 Bad SIZE parameter".to_owned());
                    };
                    // RFC 1870 §6.1: refuse up front what will not fit.
                    if self.script().size_limit().is_some_and(|limit| size > limit) {
                        return Err(TOO_BIG.to_owned());
                    }
                }
                "BODY" => {
                    let ok = value.is_some_and(|v| {
                        v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME")
                    });
                    if !ok {
                        return Err("501 5.5.4 Bad BODY parameter".to_owned());
                    }
                }
                "SMTPUTF8" if value.is_some() => {
                    return Err("501 5.5.4 SMTPUTF8 takes no value".to_owned());
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) fn rcpt(&mut self, args: Option<&str>) -> String {
        if self.txn.as_ref().is_none_or(|t| t.chunks.is_some()) {
            return NEED_MAIL.to_owned();
        }
        let Some(verbatim) = args.and_then(|a| strip_prefix_ci(a, "TO:")) else {
            return "501 5.5.4 Syntax: RCPT TO:<address>".to_owned();
        };
        let Some((address, params)) = parse_path(verbatim) else {
            return "501 5.5.4 Syntax: RCPT TO:<address>".to_owned();
        };
        if address.is_empty() {
            return "501 5.1.3 Bad recipient address syntax".to_owned();
        }
        for param in &params {
            let keyword = param.split('=').next().unwrap_or("").to_ascii_uppercase();
            let known = matches!(keyword.as_str(), "NOTIFY" | "ORCPT");
            if !known || self.greeted != Greeted::Ehlo || !self.script().has_extension("DSN") {
                return unsupported_param(&keyword);
            }
        }
        let answer = self
            .script()
            .rcpt_reply_for(address)
            .unwrap_or("250 2.1.5 Ok")
            .to_owned();
        if answer.starts_with('2') {
            if let Some(txn) = &mut self.txn {
                txn.rcpts.push(address.to_owned());
            }
            self.record(SmtpEvent::RcptTo(verbatim.to_owned()));
        }
        answer
    }
}

fn unsupported_param(keyword: &str) -> String {
    format!("555 5.5.4 Unsupported parameter {keyword}")
}

/// `s` without a leading `prefix`, compared ASCII case-insensitively.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `<address> [param ...]` right after `FROM:`/`TO:`, strictly: no space
/// before `<` (RFC 5321 §4.1.1.2), one or more spaces before parameters.
fn parse_path(arg: &str) -> Option<(&str, Vec<&str>)> {
    let inner = arg.strip_prefix('<')?;
    let close = inner.find('>')?;
    let address = &inner[..close];
    let rest = &inner[close + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    Some((address, rest.split(' ').filter(|p| !p.is_empty()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_parsing() {
        assert_eq!(parse_path("<a@b>"), Some(("a@b", vec![])));
        assert_eq!(parse_path("<>"), Some(("", vec![])));
        assert_eq!(
            parse_path("<a@b> SIZE=10  BODY=8BITMIME"),
            Some(("a@b", vec!["SIZE=10", "BODY=8BITMIME"]))
        );
        assert_eq!(parse_path(" <a@b>"), None);
        assert_eq!(parse_path("a@b"), None);
        assert_eq!(parse_path("<a@b"), None);
        assert_eq!(parse_path("<a@b>SIZE=1"), None);
        assert_eq!(strip_prefix_ci("from:<x>", "FROM:"), Some("<x>"));
        assert_eq!(strip_prefix_ci("FROM <x>", "FROM:"), None);
        assert_eq!(strip_prefix_ci("F", "FROM:"), None);
        assert_eq!(strip_prefix_ci("FRé:", "FROM:"), None);
    }
}
