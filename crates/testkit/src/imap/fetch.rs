//! FETCH and UID FETCH (RFC 3501 §6.4.5, §6.4.8): item parsing, the
//! response with its body literals, and the scripted cut mid-literal.

use std::io;

use super::events::ImapEvent;
use super::parse::Value;
use super::session::{Flow, Reply, Session};
use super::store::{split_header, ImapMessage};

/// What a FETCH item asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Item {
    Uid,
    Flags,
    Size,
    InternalDate,
    Body {
        /// The name in the response: `RFC822`, `BODY[TEXT]<0>`, ...
        name: String,
        part: Part,
        /// Sets `\Seen` (not PEEK, not RFC822.HEADER).
        sets_seen: bool,
        /// `<origin.count>`.
        partial: Option<(usize, usize)>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Whole,
    Header,
    Text,
}

impl Session {
    pub(super) async fn fetch(&mut self, args: &[Value], uid: bool) -> io::Result<Flow> {
        let [set, items] = args else {
            return Ok(Reply::bad("FETCH needs a sequence set and items").into());
        };
        let mut items = match fetch_items(items) {
            Ok(items) => items,
            Err(why) => return Ok(Reply::bad(why).into()),
        };
        if uid && !items.contains(&Item::Uid) {
            // RFC 3501 §6.4.8: UID FETCH always returns the UID.
            items.insert(0, Item::Uid);
        }
        let targets = match self.targets(set, uid) {
            Ok(t) => t,
            Err(reply) => return Ok(reply.into()),
        };
        let Some(selected) = self.selected() else {
            return Ok(Reply::bad("No mailbox selected").into());
        };
        let (name, read_only) = (selected.name.clone(), selected.read_only);
        let mut out = Vec::new();
        // Where the first body literal's bytes start in `out`.
        let mut first_literal = None;
        {
            let mut store = self.shared.store();
            let Some(mailbox) = store.find_mut(&name) else {
                return Ok(Reply::no("Mailbox is gone").into());
            };
            for (seq, uid) in targets {
                // Expunged by another session since this one last synced.
                let Some(message) = mailbox.by_uid_mut(uid) else {
                    continue;
                };
                let mut seen_now = false;
                let mut attrs: Vec<Vec<u8>> = Vec::new();
                let mut literal_at = None;
                for item in &items {
                    let attr = match item {
                        Item::Uid => format!("UID {}", message.uid).into_bytes(),
                        Item::Flags => format!("FLAGS {}", message.flag_list()).into_bytes(),
                        Item::Size => format!("RFC822.SIZE {}", message.body.len()).into_bytes(),
                        Item::InternalDate => {
                            format!("INTERNALDATE \"{}\"", message.internal_date).into_bytes()
                        }
                        Item::Body {
                            name,
                            part,
                            sets_seen,
                            partial,
                        } => {
                            if *sets_seen && !read_only && message.add_flag(r"\Seen") {
                                seen_now = true;
                            }
                            let bytes = body_part(message, *part, *partial);
                            let mut attr = format!("{name} {{{}}}\r\n", bytes.len()).into_bytes();
                            literal_at.get_or_insert((attrs.len(), attr.len()));
                            attr.extend_from_slice(bytes);
                            attr
                        }
                    };
                    attrs.push(attr);
                }
                if seen_now && !items.contains(&Item::Flags) {
                    // RFC 3501 §6.4.5: a changed \Seen is reported.
                    attrs.push(format!("FLAGS {}", message.flag_list()).into_bytes());
                }
                let head = format!("* {seq} FETCH (");
                if first_literal.is_none() {
                    if let Some((index, offset)) = literal_at {
                        let before: usize = attrs[..index].iter().map(|a| a.len() + 1).sum();
                        first_literal = Some(out.len() + head.len() + before + offset);
                    }
                }
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(&attrs.join(&b' '));
                out.extend_from_slice(b")\r\n");
            }
        }
        if let (Some(cut), Some(start)) = (self.script().die_mid_fetch, first_literal) {
            let end = (start + cut).min(out.len());
            self.link.write(&out[..end]).await?;
            self.record(ImapEvent::DroppedByScript(format!(
                "FETCH cut {} bytes into a body literal",
                end - start
            )));
            return Ok(Flow::Die);
        }
        let verb = if uid { "UID FETCH" } else { "FETCH" };
        Ok(Reply::ok(&format!("{verb} completed")).after(out).into())
    }
}

/// FETCH's items: one atom (a macro or an item) or a list of items.
fn fetch_items(value: &Value) -> Result<Vec<Item>, &'static str> {
    let atoms: Vec<&str> = match value {
        Value::Atom(a) => match a.to_ascii_uppercase().as_str() {
            "FAST" => return Ok(vec![Item::Flags, Item::InternalDate, Item::Size]),
            "ALL" | "FULL" => return Err("ENVELOPE is not supported by this fake"),
            _ => vec![a],
        },
        Value::List(list) if !list.is_empty() => {
            let mut atoms = Vec::new();
            for v in list {
                atoms.push(v.atom().ok_or("FETCH items must be atoms")?);
            }
            atoms
        }
        _ => return Err("FETCH needs items"),
    };
    atoms.into_iter().map(fetch_item).collect()
}

fn fetch_item(atom: &str) -> Result<Item, &'static str> {
    let upper = atom.to_ascii_uppercase();
    let body = |name: &str, part, sets_seen| Item::Body {
        name: name.to_owned(),
        part,
        sets_seen,
        partial: None,
    };
    match upper.as_str() {
        "UID" => return Ok(Item::Uid),
        "FLAGS" => return Ok(Item::Flags),
        "RFC822.SIZE" => return Ok(Item::Size),
        "INTERNALDATE" => return Ok(Item::InternalDate),
        "RFC822" => return Ok(body("RFC822", Part::Whole, true)),
        "RFC822.HEADER" => return Ok(body("RFC822.HEADER", Part::Header, false)),
        "RFC822.TEXT" => return Ok(body("RFC822.TEXT", Part::Text, true)),
        "ENVELOPE" | "BODY" | "BODYSTRUCTURE" => {
            return Err("ENVELOPE and BODYSTRUCTURE are not supported by this fake")
        }
        _ => {}
    }
    let (peek, rest) = if let Some(rest) = upper.strip_prefix("BODY.PEEK[") {
        (true, rest)
    } else if let Some(rest) = upper.strip_prefix("BODY[") {
        (false, rest)
    } else {
        return Err("Unknown FETCH item");
    };
    let (section, after) = rest.split_once(']').ok_or("Unclosed section")?;
    let part = match section {
        "" => Part::Whole,
        "HEADER" => Part::Header,
        "TEXT" => Part::Text,
        _ => return Err("Only BODY[], BODY[HEADER] and BODY[TEXT] are supported by this fake"),
    };
    let partial = if after.is_empty() {
        None
    } else {
        let range = after
            .strip_prefix('<')
            .and_then(|r| r.strip_suffix('>'))
            .and_then(|r| r.split_once('.'))
            .ok_or("Malformed partial")?;
        let origin = range.0.parse().map_err(|_| "Malformed partial")?;
        let count = range.1.parse().map_err(|_| "Malformed partial")?;
        Some((origin, count))
    };
    let mut name = format!("BODY[{section}]");
    if let Some((origin, _)) = partial {
        name.push_str(&format!("<{origin}>"));
    }
    Ok(Item::Body {
        name,
        part,
        sets_seen: !peek,
        partial,
    })
}

fn body_part(message: &ImapMessage, part: Part, partial: Option<(usize, usize)>) -> &[u8] {
    let (header, text) = split_header(&message.body);
    let bytes = match part {
        Part::Whole => &message.body[..],
        Part::Header => header,
        Part::Text => text,
    };
    match partial {
        Some((origin, count)) => {
            let start = origin.min(bytes.len());
            let end = start.saturating_add(count).min(bytes.len());
            &bytes[start..end]
        }
        None => bytes,
    }
}
