//! The authenticated and selected states (RFC 3501 §6.3-6.4): LIST/LSUB,
//! SELECT/EXAMINE, STATUS, CREATE, APPEND, CLOSE/UNSELECT, EXPUNGE,
//! STORE, SEARCH, and IDLE (RFC 2177); FETCH is in `fetch`.

use std::io;

use super::events::ImapEvent;
use super::parse::{astring_out, in_set, list_match, sequence_set, set_within, Value};
use super::script::ImapMoment;
use super::session::{Flow, Reply, Selected, Session, LINES};
use super::store::{ImapMessage, SYSTEM_FLAGS};

impl Session {
    /// The selected mailbox (the dispatcher checked there is one).
    pub(super) fn selected(&self) -> Option<&Selected> {
        self.selected.as_ref()
    }

    pub(super) fn select(&mut self, args: &[Value], read_only: bool) -> Reply {
        let verb = if read_only { "EXAMINE" } else { "SELECT" };
        let [mailbox] = args else {
            return Reply::bad(&format!("{verb} needs a mailbox name"));
        };
        let Some(wanted) = mailbox.text() else {
            return Reply::bad("Mailbox name must be a string");
        };
        // RFC 3501 §6.3.1: a SELECT, even a failed one, closes the
        // mailbox selected before.
        self.selected = None;
        let store = self.shared.store();
        let Some(mailbox) = store.find(&wanted) else {
            return Reply::no("[NONEXISTENT] No such mailbox");
        };
        let mut untagged = format!(
            "* FLAGS ({SYSTEM_FLAGS})\r\n* {} EXISTS\r\n* 0 RECENT\r\n",
            mailbox.messages.len()
        );
        if let Some(first) = mailbox.messages.iter().position(|m| !m.has_flag(r"\Seen")) {
            untagged.push_str(&format!("* OK [UNSEEN {}] First unseen\r\n", first + 1));
        }
        let permanent = if read_only {
            String::new()
        } else {
            format!("{SYSTEM_FLAGS} \\*")
        };
        untagged.push_str(&format!(
            "* OK [PERMANENTFLAGS ({permanent})] Limited\r\n\
             * OK [UIDVALIDITY {}] UIDs valid\r\n\
             * OK [UIDNEXT {}] Predicted next UID\r\n",
            mailbox.uidvalidity, mailbox.uidnext
        ));
        let selected = Selected {
            name: mailbox.name.clone(),
            read_only,
            uids: mailbox.uids(),
        };
        drop(store);
        self.record(ImapEvent::Selected {
            mailbox: selected.name.clone(),
            read_only,
        });
        self.selected = Some(selected);
        let code = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        Reply::ok(&format!("[{code}] {verb} completed")).after(untagged.into_bytes())
    }

    pub(super) fn list(&self, verb: &str, args: &[Value]) -> Reply {
        let [reference, pattern] = args else {
            return Reply::bad(&format!("{verb} needs a reference and a pattern"));
        };
        let (Some(reference), Some(pattern)) = (reference.text(), pattern.text()) else {
            return Reply::bad(&format!("{verb} takes two strings"));
        };
        let mut out = String::new();
        if pattern.is_empty() {
            // RFC 3501 §6.3.8: the hierarchy delimiter and root.
            if verb == "LIST" {
                out.push_str("* LIST (\\Noselect) \"/\" \"\"\r\n");
            }
        } else {
            let pattern = format!("{reference}{pattern}");
            for mailbox in &self.shared.store().mailboxes {
                if list_match(&pattern, &mailbox.name) {
                    out.push_str(&format!(
                        "* {verb} (\\HasNoChildren) \"/\" {}\r\n",
                        astring_out(&mailbox.name)
                    ));
                }
            }
        }
        Reply::ok(&format!("{verb} completed")).after(out.into_bytes())
    }

    pub(super) fn status(&self, args: &[Value]) -> Reply {
        let [mailbox, Value::List(items)] = args else {
            return Reply::bad("STATUS needs a mailbox and a list of items");
        };
        let Some(wanted) = mailbox.text() else {
            return Reply::bad("Mailbox name must be a string");
        };
        let store = self.shared.store();
        let Some(mailbox) = store.find(&wanted) else {
            return Reply::no("[NONEXISTENT] No such mailbox");
        };
        let mut parts = Vec::new();
        for item in items {
            let item = item.atom().unwrap_or("").to_ascii_uppercase();
            let value = match item.as_str() {
                "MESSAGES" => mailbox.messages.len(),
                "RECENT" => 0,
                "UIDNEXT" => mailbox.uidnext as usize,
                "UIDVALIDITY" => mailbox.uidvalidity as usize,
                "UNSEEN" => mailbox.unseen(),
                _ => return Reply::bad("Unknown STATUS item"),
            };
            parts.push(format!("{item} {value}"));
        }
        let line = format!(
            "* STATUS {} ({})\r\n",
            astring_out(&mailbox.name),
            parts.join(" ")
        );
        Reply::ok("STATUS completed").after(line.into_bytes())
    }

    pub(super) fn create(&mut self, args: &[Value]) -> Reply {
        let [mailbox] = args else {
            return Reply::bad("CREATE needs a mailbox name");
        };
        let Some(name) = mailbox.text() else {
            return Reply::bad("Mailbox name must be a string");
        };
        let name = name.trim_end_matches('/');
        if name.is_empty() {
            return Reply::bad("Empty mailbox name");
        }
        if self.shared.store().create(name) {
            Reply::ok("CREATE completed")
        } else {
            Reply::no("[ALREADYEXISTS] Mailbox exists")
        }
    }

    pub(super) fn append(&mut self, args: &[Value]) -> Reply {
        let (mailbox, rest) = match args {
            [mailbox, rest @ ..] if !rest.is_empty() => (mailbox, rest),
            _ => return Reply::bad("APPEND needs a mailbox and a message literal"),
        };
        let Some(name) = mailbox.text() else {
            return Reply::bad("Mailbox name must be a string");
        };
        let (options, message) = rest.split_at(rest.len() - 1);
        let Value::Literal {
            bytes,
            synchronizing,
        } = &message[0]
        else {
            return Reply::bad("APPEND's message must be a literal");
        };
        let mut flags = Vec::new();
        let mut date = None;
        for option in options {
            match option {
                Value::List(list) if flags.is_empty() && date.is_none() => {
                    for flag in list {
                        match flag.atom() {
                            Some(f) => flags.push(f.to_owned()),
                            None => return Reply::bad("Flags must be atoms"),
                        }
                    }
                }
                Value::Quoted(d) if date.is_none() => {
                    date = Some(String::from_utf8_lossy(d).into_owned());
                }
                _ => return Reply::bad("APPEND takes (flags) and \"date-time\" only"),
            }
        }
        let size = bytes.len();
        let appended = {
            let mut store = self.shared.store();
            let uid = store.append(&name, flags, date, bytes.clone());
            uid.and_then(|uid| {
                let mailbox = store.find(&name)?;
                Some((uid, mailbox.name.clone(), mailbox.uidvalidity))
            })
        };
        let Some((uid, stored_name, uidvalidity)) = appended else {
            return Reply::no("[TRYCREATE] No such mailbox");
        };
        self.shared.notify();
        self.record(ImapEvent::Appended {
            mailbox: stored_name,
            uid,
            size,
            synchronizing: *synchronizing,
        });
        let updates = self.sync();
        let text = if self.script().has_capability("UIDPLUS") {
            format!("[APPENDUID {uidvalidity} {uid}] APPEND completed")
        } else {
            "APPEND completed".to_owned()
        };
        Reply::ok(&text).after(updates)
    }

    /// CLOSE (`expunge`: remove `\Deleted` silently if read-write) or
    /// UNSELECT.
    pub(super) fn close(&mut self, args: &[Value], expunge: bool) -> Reply {
        if !args.is_empty() {
            return Reply::bad("No arguments expected");
        }
        let Some(selected) = self.selected.take() else {
            return Reply::bad("No mailbox selected");
        };
        if expunge && !selected.read_only {
            self.remove_deleted(&selected.name);
        }
        Reply::ok(if expunge {
            "CLOSE completed"
        } else {
            "UNSELECT completed"
        })
    }

    /// Remove the mailbox's `\Deleted` messages, record and announce it.
    fn remove_deleted(&self, name: &str) {
        let gone = self
            .shared
            .store()
            .find_mut(name)
            .map(|m| m.expunge())
            .unwrap_or_default();
        if !gone.is_empty() {
            self.shared.notify();
            self.record(ImapEvent::Expunged {
                mailbox: name.to_owned(),
                uids: gone,
            });
        }
    }

    pub(super) fn expunge(&mut self, args: &[Value]) -> Reply {
        if !args.is_empty() {
            return Reply::bad("EXPUNGE takes no arguments");
        }
        let Some(selected) = self.selected() else {
            return Reply::bad("No mailbox selected");
        };
        if selected.read_only {
            return Reply::no("[READ-ONLY] Mailbox is read-only");
        }
        let name = selected.name.clone();
        self.remove_deleted(&name);
        let updates = self.sync();
        Reply::ok("EXPUNGE completed").after(updates)
    }

    /// The (sequence number, UID) pairs a set names, or why not.
    pub(super) fn targets(&self, set: &Value, uid: bool) -> Result<Vec<(usize, u32)>, Reply> {
        let Some(set) = set.atom().and_then(sequence_set) else {
            return Err(Reply::bad("Invalid sequence set"));
        };
        let Some(selected) = self.selected() else {
            return Err(Reply::bad("No mailbox selected"));
        };
        let view = &selected.uids;
        let count = u32::try_from(view.len()).unwrap_or(u32::MAX);
        if uid {
            let max = view.last().copied().unwrap_or(0);
            return Ok(view
                .iter()
                .enumerate()
                .filter(|(_, u)| in_set(&set, **u, max))
                .map(|(i, u)| (i + 1, *u))
                .collect());
        }
        if !set_within(&set, count) {
            return Err(Reply::bad("Invalid message sequence number"));
        }
        Ok(view
            .iter()
            .enumerate()
            .filter(|(i, _)| in_set(&set, u32::try_from(i + 1).unwrap_or(u32::MAX), count))
            .map(|(i, u)| (i + 1, *u))
            .collect())
    }

    pub(super) fn store(&mut self, args: &[Value], uid: bool) -> Reply {
        let [set, Value::Atom(operation), flag_args @ ..] = args else {
            return Reply::bad("STORE needs a sequence set, an operation and flags");
        };
        let operation = operation.to_ascii_uppercase();
        let (operation, silent) = match operation.strip_suffix(".SILENT") {
            Some(op) => (op, true),
            None => (operation.as_str(), false),
        };
        if !matches!(operation, "FLAGS" | "+FLAGS" | "-FLAGS") {
            return Reply::bad("Unknown STORE operation");
        }
        let flag_values: &[Value] = match flag_args {
            [Value::List(list)] => list,
            [] => return Reply::bad("STORE needs flags"),
            atoms => atoms,
        };
        let mut flags = Vec::new();
        for flag in flag_values {
            match flag.atom() {
                Some(f) => flags.push(f.to_owned()),
                None => return Reply::bad("Flags must be atoms"),
            }
        }
        let targets = match self.targets(set, uid) {
            Ok(t) => t,
            Err(reply) => return reply,
        };
        let Some(selected) = self.selected() else {
            return Reply::bad("No mailbox selected");
        };
        if selected.read_only {
            return Reply::no("[READ-ONLY] Mailbox is read-only");
        }
        let name = selected.name.clone();
        let mut out = String::new();
        let mut store = self.shared.store();
        let Some(mailbox) = store.find_mut(&name) else {
            return Reply::no("Mailbox is gone");
        };
        for (seq, uid_of) in targets {
            let Some(message) = mailbox.by_uid_mut(uid_of) else {
                continue;
            };
            match operation {
                "FLAGS" => {
                    message.flags.clear();
                    for f in &flags {
                        message.add_flag(f);
                    }
                }
                "+FLAGS" => {
                    for f in &flags {
                        message.add_flag(f);
                    }
                }
                _ => {
                    for f in &flags {
                        message.remove_flag(f);
                    }
                }
            }
            if !silent {
                let uid_part = if uid {
                    format!("UID {uid_of} ")
                } else {
                    String::new()
                };
                out.push_str(&format!(
                    "* {seq} FETCH ({uid_part}FLAGS {})\r\n",
                    message.flag_list()
                ));
            }
        }
        drop(store);
        let verb = if uid { "UID STORE" } else { "STORE" };
        Reply::ok(&format!("{verb} completed")).after(out.into_bytes())
    }

    pub(super) fn search(&self, args: &[Value], uid: bool) -> Reply {
        let mut keys = args;
        if let [Value::Atom(charset), _, rest @ ..] = keys {
            if charset.eq_ignore_ascii_case("CHARSET") {
                keys = rest;
            }
        }
        if keys.is_empty() {
            return Reply::bad("SEARCH needs a key");
        }
        let Some(selected) = self.selected() else {
            return Reply::bad("No mailbox selected");
        };
        let store = self.shared.store();
        let Some(mailbox) = store.find(&selected.name) else {
            return Reply::no("Mailbox is gone");
        };
        let view = &selected.uids;
        let count = u32::try_from(view.len()).unwrap_or(u32::MAX);
        let max_uid = view.last().copied().unwrap_or(0);
        let mut hits = Vec::new();
        for (i, u) in view.iter().enumerate() {
            let Some(message) = mailbox.by_uid(*u) else {
                continue;
            };
            let seq = u32::try_from(i + 1).unwrap_or(u32::MAX);
            match matches_all(keys, message, seq, count, max_uid) {
                Ok(true) => hits.push(if uid { *u } else { seq }),
                Ok(false) => {}
                Err(why) => return Reply::bad(why),
            }
        }
        let mut line = String::from("* SEARCH");
        for hit in hits {
            line.push_str(&format!(" {hit}"));
        }
        line.push_str("\r\n");
        let verb = if uid { "UID SEARCH" } else { "SEARCH" };
        Reply::ok(&format!("{verb} completed")).after(line.into_bytes())
    }

    pub(super) async fn idle(&mut self, args: &[Value]) -> io::Result<Flow> {
        if !args.is_empty() {
            return Ok(Reply::bad("IDLE takes no arguments").into());
        }
        let mut rx = self.shared.changed.subscribe();
        let mut go_ahead = b"+ idling\r\n".to_vec();
        go_ahead.extend(self.script().untagged_at(&ImapMoment::Idling));
        // Whatever changed before the subscription.
        go_ahead.extend(self.sync());
        self.link.write(&go_ahead).await?;
        self.record(ImapEvent::IdleStarted);
        loop {
            tokio::select! {
                line = self.link.read_line(&LINES) => {
                    let Some(line) = line else {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    };
                    if line.eq_ignore_ascii_case("DONE") {
                        break;
                    }
                    self.violation(format!(
                        "a line of {} octets in IDLE, not DONE",
                        line.len()
                    ));
                    return Ok(Reply::bad("Expected DONE").into());
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        return Err(io::Error::other("store notifier gone"));
                    }
                    let updates = self.sync();
                    if !updates.is_empty() {
                        self.link.write(&updates).await?;
                    }
                }
            }
        }
        self.record(ImapEvent::IdleDone);
        Ok(Reply::ok("IDLE terminated").into())
    }
}

/// Whether `message` matches every SEARCH key (flag keys, ALL, a
/// sequence set, `UID set`).
fn matches_all(
    keys: &[Value],
    message: &ImapMessage,
    seq: u32,
    count: u32,
    max_uid: u32,
) -> Result<bool, &'static str> {
    let mut keys = keys.iter();
    let mut all = true;
    while let Some(key) = keys.next() {
        let key = key.atom().ok_or("SEARCH keys must be atoms")?;
        let flag = |f: &str| message.has_flag(f);
        let hit = match key.to_ascii_uppercase().as_str() {
            "ALL" => true,
            "SEEN" => flag(r"\Seen"),
            "UNSEEN" => !flag(r"\Seen"),
            "DELETED" => flag(r"\Deleted"),
            "UNDELETED" => !flag(r"\Deleted"),
            "FLAGGED" => flag(r"\Flagged"),
            "UNFLAGGED" => !flag(r"\Flagged"),
            "ANSWERED" => flag(r"\Answered"),
            "UNANSWERED" => !flag(r"\Answered"),
            "DRAFT" => flag(r"\Draft"),
            "UNDRAFT" => !flag(r"\Draft"),
            "UID" => {
                let set = keys
                    .next()
                    .and_then(Value::atom)
                    .and_then(sequence_set)
                    .ok_or("UID needs a set")?;
                in_set(&set, message.uid, max_uid)
            }
            other => {
                let set = sequence_set(other).ok_or("SEARCH key not supported by this fake")?;
                in_set(&set, seq, count)
            }
        };
        all &= hit;
    }
    Ok(all)
}
