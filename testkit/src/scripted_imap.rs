//! A scripted IMAP server on loopback (plain TCP, for a reader with
//! `tls = "none"`): it serves a folder of mails like any server, except
//! where the test's [`Script`] tells it to misbehave: refuse a command with
//! a NO or BAD, leave a UID out of a FETCH, send a NIL body, echo the
//! credential it was sent, say BYE. The script can be changed between
//! polls (a server that recovers), and every command received is logged.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How a UID is withheld from a body FETCH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withhold {
    /// Left out of the answer.
    Omit,
    /// Answered with `BODY[] NIL`.
    Nil,
}

/// What the server does; change it through [`ScriptedImap::script`].
#[derive(Debug, Clone)]
pub struct Script {
    pub uidvalidity: u32,
    /// UID → raw mail, in the selected folder.
    pub mails: BTreeMap<u32, Vec<u8>>,
    /// UIDs flagged `\Seen` / `\Deleted`.
    pub seen: HashSet<u32>,
    pub deleted: HashSet<u32>,
    /// Mails moved away, by target folder.
    pub moved: BTreeMap<String, Vec<u32>>,
    pub capabilities: String,
    /// Instead of `OK` to AUTHENTICATE / LOGIN: the whole tagged answer
    /// after the tag, e.g. `NO [LIMIT] Too many connections`. `{token}` and
    /// `{blob}` are replaced by what the client sent (an echoing server),
    /// `{token20}` and `{blob30}` by their first 20 / 30 characters,
    /// `{tokenmid}` by 20 characters from the token's middle.
    pub auth_answer: Option<String>,
    /// Instead of the SELECT answer.
    pub select_answer: Option<String>,
    /// Instead of `OK` to a body FETCH (the UIDs not withheld are still
    /// served before it).
    pub fetch_answer: Option<String>,
    pub withhold: HashMap<u32, Withhold>,
    /// An untagged `* BYE ...` sent in answer to a body FETCH, after which
    /// the connection is closed (`{token}`, `{blob}` replaced).
    pub fetch_bye: Option<String>,
    pub store_answer: Option<String>,
    pub expunge_answer: Option<String>,
    pub move_answer: Option<String>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            uidvalidity: 7,
            mails: BTreeMap::new(),
            seen: HashSet::new(),
            deleted: HashSet::new(),
            moved: BTreeMap::new(),
            capabilities: "IMAP4rev1 AUTH=XOAUTH2 AUTH=PLAIN UIDPLUS MOVE".into(),
            auth_answer: None,
            select_answer: None,
            fetch_answer: None,
            withhold: HashMap::new(),
            fetch_bye: None,
            store_answer: None,
            expunge_answer: None,
            move_answer: None,
        }
    }
}

pub struct ScriptedImap {
    port: u16,
    script: Arc<Mutex<Script>>,
    log: Arc<Mutex<Vec<String>>>,
    /// Every credential the client sent: the XOAUTH2 / PLAIN blob as sent
    /// (base64) and the token or password in it.
    credentials: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedImap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedImap {
    pub async fn start(script: Script) -> ScriptedImap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let script = Arc::new(Mutex::new(script));
        let log = Arc::new(Mutex::new(Vec::new()));
        let credentials = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (script, log, credentials) = (script.clone(), log.clone(), credentials.clone());
            async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let conn = Conn {
                        script: script.clone(),
                        log: log.clone(),
                        credentials: credentials.clone(),
                        token: String::new(),
                        blob: String::new(),
                    };
                    tokio::spawn(conn.serve(tcp));
                }
            }
        });
        ScriptedImap {
            port,
            script,
            log,
            credentials,
            task,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Changes the script (takes effect for the next command).
    pub fn script<R>(&self, f: impl FnOnce(&mut Script) -> R) -> R {
        f(&mut self.script.lock().expect("script"))
    }

    /// The commands received, without their tags.
    pub fn commands(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }

    pub fn credentials(&self) -> Vec<String> {
        self.credentials.lock().expect("credentials").clone()
    }
}

struct Conn {
    script: Arc<Mutex<Script>>,
    log: Arc<Mutex<Vec<String>>>,
    credentials: Arc<Mutex<Vec<String>>>,
    token: String,
    blob: String,
}

/// UIDs in an IMAP sequence set (`1:3,7,9:*`), `*` being `max`.
fn parse_set(set: &str, max: u32) -> Vec<u32> {
    let num = |n: &str| {
        if n == "*" {
            max
        } else {
            n.parse().unwrap_or(0)
        }
    };
    let mut out = Vec::new();
    for part in set.split(',') {
        match part.split_once(':') {
            Some((a, b)) => {
                let (a, b) = (num(a), num(b));
                out.extend(a.min(b)..=a.max(b));
            }
            None => out.push(num(part)),
        }
    }
    out
}

impl Conn {
    fn fill(&self, text: &str) -> String {
        let prefix = |s: &str, n: usize| s.chars().take(n).collect::<String>();
        let middle = |s: &str| s.chars().skip(7).take(20).collect::<String>();
        // Truncated echoes: a prefix and a piece from the middle.
        text.replace("{token20}", &prefix(&self.token, 20))
            .replace("{blob30}", &prefix(&self.blob, 30))
            .replace("{tokenmid}", &middle(&self.token))
            .replace("{token}", &self.token)
            .replace("{blob}", &self.blob)
    }

    async fn serve(mut self, tcp: tokio::net::TcpStream) {
        let mut conn = BufReader::new(tcp);
        if conn
            .get_mut()
            .write_all(b"* OK scripted IMAP ready\r\n")
            .await
            .is_err()
        {
            return;
        }
        let mut line = String::new();
        loop {
            line.clear();
            match conn.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let text = line.trim_end().to_string();
            let Some((tag, command)) = text.split_once(' ') else {
                continue;
            };
            let (tag, command) = (tag.to_string(), command.to_string());
            self.log.lock().expect("log").push(command.clone());
            let upper = command.to_ascii_uppercase();
            let mut out: Vec<u8> = Vec::new();
            let mut close = false;
            if upper.starts_with("AUTHENTICATE ") {
                // async-imap waits for a continuation, then sends the blob.
                let _ = conn.get_mut().write_all(b"+ \r\n").await;
                let mut blob = String::new();
                if conn.read_line(&mut blob).await.unwrap_or(0) == 0 {
                    return;
                }
                let blob = blob.trim_end().to_string();
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(&blob)
                    .unwrap_or_default();
                let decoded = String::from_utf8_lossy(&decoded).into_owned();
                let token = match decoded.split_once("auth=Bearer ") {
                    Some((_, rest)) => rest.trim_end_matches('\x01').to_string(),
                    // PLAIN: \0user\0password
                    None => decoded.rsplit('\0').next().unwrap_or("").to_string(),
                };
                self.credentials
                    .lock()
                    .expect("credentials")
                    .extend([blob.clone(), token.clone()]);
                self.token = token;
                self.blob = blob;
                let answer = self.script.lock().expect("script").auth_answer.clone();
                match answer {
                    Some(a) => out.extend(format!("{tag} {}\r\n", self.fill(&a)).as_bytes()),
                    None => out.extend(format!("{tag} OK authenticated\r\n").as_bytes()),
                }
            } else if upper.starts_with("LOGIN ") {
                let answer = self.script.lock().expect("script").auth_answer.clone();
                match answer {
                    Some(a) => out.extend(format!("{tag} {}\r\n", self.fill(&a)).as_bytes()),
                    None => out.extend(format!("{tag} OK logged in\r\n").as_bytes()),
                }
            } else {
                let mut script = self.script.lock().expect("script");
                close = self.answer(&mut script, &tag, &command, &upper, &mut out);
            }
            if conn.get_mut().write_all(&out).await.is_err() || close {
                return;
            }
        }
    }

    /// Answers one command into `out`; true when the connection is to close.
    fn answer(
        &self,
        s: &mut Script,
        tag: &str,
        command: &str,
        upper: &str,
        out: &mut Vec<u8>,
    ) -> bool {
        let mut put = |text: String| out.extend(text.as_bytes());
        let max = s.mails.keys().next_back().copied().unwrap_or(0);
        let seq_of = |s: &Script, uid: u32| s.mails.keys().position(|&u| u == uid).map(|p| p + 1);
        if upper == "CAPABILITY" {
            put(format!("* CAPABILITY {}\r\n{tag} OK\r\n", s.capabilities));
        } else if upper == "NOOP" {
            put(format!("{tag} OK\r\n"));
        } else if upper.starts_with("SELECT ") || upper.starts_with("EXAMINE ") {
            match &s.select_answer {
                Some(a) => put(format!("{tag} {a}\r\n")),
                None => put(format!(
                    "* {} EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY {}] UIDs valid\r\n\
                     * OK [UIDNEXT {}] next\r\n{tag} OK [READ-WRITE] selected\r\n",
                    s.mails.len(),
                    s.uidvalidity,
                    max + 1
                )),
            }
        } else if upper.starts_with("LIST ") {
            let name = command.rsplit(' ').next().unwrap_or("\"\"");
            put(format!("* LIST () \"/\" {name}\r\n{tag} OK\r\n"));
        } else if upper == "UID SEARCH ALL" {
            let all: Vec<String> = s.mails.keys().map(u32::to_string).collect();
            put(format!("* SEARCH {}\r\n{tag} OK\r\n", all.join(" ")));
        } else if let Some(rest) = upper.strip_prefix("UID SEARCH UID ") {
            // No mail of a script has been read: UNSEEN (first contact's
            // search) matches all of them.
            let rest = rest.trim().trim_end_matches(" UNSEEN");
            let asked: HashSet<u32> = parse_set(rest, max).into_iter().collect();
            let mut found: Vec<String> = s
                .mails
                .keys()
                .filter(|u| asked.contains(u))
                .map(u32::to_string)
                .collect();
            // "n:*" always matches the highest UID.
            if rest.contains('*') && found.is_empty() && max > 0 {
                found.push(max.to_string());
            }
            if found.is_empty() {
                put(format!("* SEARCH\r\n{tag} OK\r\n"));
            } else {
                put(format!("* SEARCH {}\r\n{tag} OK\r\n", found.join(" ")));
            }
        } else if let Some(rest) = upper.strip_prefix("UID FETCH ") {
            let (set, items) = rest.split_once(' ').unwrap_or((rest, ""));
            let uids: Vec<u32> = parse_set(set, max)
                .into_iter()
                .filter(|u| s.mails.contains_key(u))
                .collect();
            if items.contains("RFC822.SIZE") {
                for uid in uids {
                    let seq = seq_of(s, uid).unwrap_or(0);
                    put(format!(
                        "* {seq} FETCH (UID {uid} RFC822.SIZE {})\r\n",
                        s.mails[&uid].len()
                    ));
                }
                put(format!("{tag} OK\r\n"));
                return false;
            }
            if let Some(bye) = &s.fetch_bye {
                put(format!("* BYE {}\r\n", self.fill(bye)));
                return true;
            }
            for uid in uids {
                let seq = seq_of(s, uid).unwrap_or(0);
                match s.withhold.get(&uid) {
                    Some(Withhold::Omit) => {}
                    Some(Withhold::Nil) => {
                        put(format!("* {seq} FETCH (UID {uid} BODY[]<0> NIL)\r\n"))
                    }
                    None => {
                        let body = &s.mails[&uid];
                        put(format!(
                            "* {seq} FETCH (UID {uid} BODY[]<0> {{{}}}\r\n",
                            body.len()
                        ));
                        out_body(&mut put, body);
                        put(")\r\n".into());
                    }
                }
            }
            match &s.fetch_answer {
                Some(a) => put(format!("{tag} {a}\r\n")),
                None => put(format!("{tag} OK\r\n")),
            }
        } else if let Some(rest) = upper.strip_prefix("UID STORE ") {
            if let Some(a) = &s.store_answer {
                put(format!("{tag} {a}\r\n"));
                return false;
            }
            let set = rest.split(' ').next().unwrap_or("");
            for uid in parse_set(set, max) {
                if rest.contains("\\SEEN") {
                    s.seen.insert(uid);
                }
                if rest.contains("\\DELETED") {
                    s.deleted.insert(uid);
                }
            }
            put(format!("{tag} OK\r\n"));
        } else if upper.starts_with("UID EXPUNGE") || upper == "EXPUNGE" {
            if let Some(a) = &s.expunge_answer {
                put(format!("{tag} {a}\r\n"));
                return false;
            }
            let gone: Vec<u32> = s.deleted.drain().collect();
            for uid in gone {
                if let Some(seq) = seq_of(s, uid) {
                    s.mails.remove(&uid);
                    put(format!("* {seq} EXPUNGE\r\n"));
                }
            }
            put(format!("{tag} OK\r\n"));
        } else if let Some(rest) = upper.strip_prefix("UID MOVE ") {
            if let Some(a) = &s.move_answer {
                put(format!("{tag} {a}\r\n"));
                return false;
            }
            let (set, target) = rest.split_once(' ').unwrap_or((rest, ""));
            for uid in parse_set(set, max) {
                if let Some(seq) = seq_of(s, uid) {
                    s.mails.remove(&uid);
                    s.moved
                        .entry(target.trim_matches('"').to_string())
                        .or_default()
                        .push(uid);
                    put(format!("* {seq} EXPUNGE\r\n"));
                }
            }
            put(format!("{tag} OK\r\n"));
        } else if upper == "LOGOUT" {
            put(format!("* BYE bye\r\n{tag} OK\r\n"));
            return true;
        } else {
            put(format!("{tag} BAD unknown command\r\n"));
        }
        false
    }
}

fn out_body(put: &mut impl FnMut(String), body: &[u8]) {
    // Test mails are text.
    put(String::from_utf8_lossy(body).into_owned());
}
