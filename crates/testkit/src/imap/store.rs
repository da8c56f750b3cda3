//! The mailboxes every session of one fake shares: names, UIDs, flags and
//! message bytes. Sessions see each other's APPENDs and EXPUNGEs.

use std::fmt;

use super::script::{same_mailbox, ImapScript};

/// The INTERNALDATE of the script's messages and of APPENDs without a
/// date (RFC 3501's example date).
pub(super) const DEFAULT_INTERNAL_DATE: &str = "17-Jul-1996 02:44:25 -0700";

/// The system flags SELECT lists (RFC 3501 §2.3.2, `\Recent` aside).
pub(super) const SYSTEM_FLAGS: &str = r"\Answered \Flagged \Deleted \Seen \Draft";

/// One message in a fake mailbox.
#[derive(Clone, PartialEq, Eq)]
pub struct ImapMessage {
    /// Its UID, from 1 per mailbox, never reused.
    pub uid: u32,
    /// Its flags as last set (`\Seen`, `\Deleted`, keywords), in the
    /// order they were added.
    pub flags: Vec<String>,
    /// INTERNALDATE, as APPEND gave it (or a fixed default).
    pub internal_date: String,
    /// The message, byte-exact.
    pub body: Vec<u8>,
}

impl ImapMessage {
    /// Whether it has `flag` (ASCII case-insensitive, as flags compare).
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f.eq_ignore_ascii_case(flag))
    }

    pub(super) fn add_flag(&mut self, flag: &str) -> bool {
        if self.has_flag(flag) {
            return false;
        }
        self.flags.push(flag.to_owned());
        true
    }

    pub(super) fn remove_flag(&mut self, flag: &str) {
        self.flags.retain(|f| !f.eq_ignore_ascii_case(flag));
    }

    /// `(\Seen \Deleted)` as FETCH FLAGS writes it.
    pub(super) fn flag_list(&self) -> String {
        format!("({})", self.flags.join(" "))
    }
}

impl fmt::Debug for ImapMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Text, not a byte array, so a failing assertion is readable; a
        // large body is cut short.
        let shown = &self.body[..self.body.len().min(512)];
        f.debug_struct("ImapMessage")
            .field("uid", &self.uid)
            .field("flags", &self.flags)
            .field("internal_date", &self.internal_date)
            .field("size", &self.body.len())
            .field("body", &String::from_utf8_lossy(shown))
            .finish()
    }
}

pub(super) struct Mailbox {
    pub(super) name: String,
    pub(super) uidvalidity: u32,
    pub(super) uidnext: u32,
    pub(super) messages: Vec<ImapMessage>,
}

impl Mailbox {
    fn new(name: &str, uidvalidity: u32) -> Self {
        Self {
            name: name.to_owned(),
            uidvalidity,
            uidnext: 1,
            messages: Vec::new(),
        }
    }

    pub(super) fn uids(&self) -> Vec<u32> {
        self.messages.iter().map(|m| m.uid).collect()
    }

    pub(super) fn by_uid(&self, uid: u32) -> Option<&ImapMessage> {
        self.messages.iter().find(|m| m.uid == uid)
    }

    pub(super) fn by_uid_mut(&mut self, uid: u32) -> Option<&mut ImapMessage> {
        self.messages.iter_mut().find(|m| m.uid == uid)
    }

    pub(super) fn unseen(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| !m.has_flag(r"\Seen"))
            .count()
    }

    fn append(&mut self, flags: Vec<String>, internal_date: String, body: Vec<u8>) -> u32 {
        let uid = self.uidnext;
        self.uidnext += 1;
        self.messages.push(ImapMessage {
            uid,
            flags,
            internal_date,
            body,
        });
        uid
    }

    /// Remove the `\Deleted` messages; their UIDs.
    pub(super) fn expunge(&mut self) -> Vec<u32> {
        let gone: Vec<u32> = self
            .messages
            .iter()
            .filter(|m| m.has_flag(r"\Deleted"))
            .map(|m| m.uid)
            .collect();
        self.messages.retain(|m| !m.has_flag(r"\Deleted"));
        gone
    }
}

pub(super) struct Store {
    pub(super) mailboxes: Vec<Mailbox>,
}

impl Store {
    pub(super) fn new(script: &ImapScript) -> Self {
        let mut store = Self {
            mailboxes: Vec::new(),
        };
        if !script
            .mailboxes
            .iter()
            .any(|(n, _)| same_mailbox(n, "INBOX"))
        {
            store.create("INBOX");
        }
        for (name, bodies) in &script.mailboxes {
            if store.find(name).is_none() {
                store.create(name);
            }
            for body in bodies {
                store.append(name, Vec::new(), None, body.clone());
            }
        }
        store
    }

    pub(super) fn find(&self, name: &str) -> Option<&Mailbox> {
        self.mailboxes.iter().find(|m| same_mailbox(&m.name, name))
    }

    pub(super) fn find_mut(&mut self, name: &str) -> Option<&mut Mailbox> {
        self.mailboxes
            .iter_mut()
            .find(|m| same_mailbox(&m.name, name))
    }

    /// Create `name` (`false` if it exists). UIDVALIDITY differs per
    /// mailbox.
    pub(super) fn create(&mut self, name: &str) -> bool {
        if self.find(name).is_some() {
            return false;
        }
        let uidvalidity = 1_000 + u32::try_from(self.mailboxes.len()).unwrap_or(0);
        self.mailboxes.push(Mailbox::new(name, uidvalidity));
        true
    }

    /// Store a message; its UID, or `None` if there is no such mailbox.
    pub(super) fn append(
        &mut self,
        name: &str,
        flags: Vec<String>,
        internal_date: Option<String>,
        body: Vec<u8>,
    ) -> Option<u32> {
        let date = internal_date.unwrap_or_else(|| DEFAULT_INTERNAL_DATE.to_owned());
        Some(self.find_mut(name)?.append(flags, date, body))
    }
}

/// Header and text of a message: split after the first empty line (the
/// header keeps it); no empty line means all header.
pub(super) fn split_header(body: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memmem::find(body, b"\r\n\r\n") {
        Some(p) => body.split_at(p + 4),
        None => (body, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_mailboxes_and_uids() {
        let script = ImapScript::new()
            .message("one")
            .message_in("Archive", "a1")
            .message("two")
            .mailbox("inbox")
            .mailbox("Empty");
        let mut store = Store::new(&script);
        let names: Vec<&str> = store.mailboxes.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["INBOX", "Archive", "Empty"]);
        assert_eq!(store.find("inbox").map(Mailbox::uids), Some(vec![1, 2]));
        assert_eq!(store.find("Archive").map(Mailbox::uids), Some(vec![1]));
        assert!(store.find("archive").is_none());
        assert_ne!(
            store.find("INBOX").map(|m| m.uidvalidity),
            store.find("Archive").map(|m| m.uidvalidity)
        );
        assert!(!store.create("INBOX"));
        assert_eq!(store.append("Nope", Vec::new(), None, Vec::new()), None);

        let inbox = store.find_mut("INBOX").expect("INBOX");
        inbox.by_uid_mut(1).expect("uid 1").add_flag(r"\Deleted");
        assert_eq!(inbox.expunge(), [1]);
        assert_eq!(
            store.append("INBOX", vec![r"\Seen".into()], None, b"x".to_vec()),
            Some(3),
            "UIDs are not reused"
        );
        let inbox = store.find("INBOX").expect("INBOX");
        assert_eq!(inbox.unseen(), 1);
        assert_eq!(inbox.by_uid(3).expect("uid 3").flag_list(), r"(\Seen)");
    }

    #[test]
    fn flags_compare_case_insensitively() {
        let mut m = ImapMessage {
            uid: 1,
            flags: Vec::new(),
            internal_date: DEFAULT_INTERNAL_DATE.into(),
            body: Vec::new(),
        };
        assert!(m.add_flag(r"\Seen"));
        assert!(!m.add_flag(r"\SEEN"));
        assert!(m.has_flag(r"\seen"));
        m.remove_flag(r"\sEEn");
        assert_eq!(m.flag_list(), "()");
    }

    #[test]
    fn header_split() {
        assert_eq!(
            split_header(b"A: b\r\n\r\nbody\r\n"),
            (&b"A: b\r\n\r\n"[..], &b"body\r\n"[..])
        );
        assert_eq!(split_header(b"A: b\r\n"), (&b"A: b\r\n"[..], &b""[..]));
    }
}
