//! The terminal UI's state and what keys and answers do to it.
//!
//! Nothing here does I/O: a key or an answer from the local API changes the
//! state and may return [`Request`]s, which the runner (`super::run`) carries
//! out in background tasks. The draw code (`super::ui`) only reads the state.

use peerchat_node::api::ApiEvent;
use peerchat_node::chat::{
    ChatEvent, ContactView, ConversationView, MessageView, StatusView, WhoisView,
};
use ratatui::crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// Longest message text, in bytes of UTF-8 (the protocol's limit).
pub(crate) const MAX_TEXT_BYTES: usize = 960;
/// Longest username (the protocol's limit).
const MAX_NAME: usize = 32;
/// How many lines the input history keeps.
const HISTORY: usize = 100;
/// How many of the latest messages of a conversation are shown.
pub(crate) const HISTORY_LIMIT: usize = 200;

/// What the runner should do (in the background).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    /// First run: create the user.
    Init { name: String },
    /// Start the node in this process (joining through `bootstrap`, if any).
    Start { bootstrap: Option<String> },
    /// Restart the node joining through `bootstrap` (a returning user whose saved contacts are gone).
    Rejoin { bootstrap: String },
    /// `GET /api/status`.
    Status,
    /// `GET /api/conversations`.
    Conversations,
    /// `GET /api/history/{name}`.
    History(String),
    /// A sender known only by key (not a contact, so no name): the received
    /// messages from `key` in `GET /api/inbox`, shown as conversation `name`.
    FromKey { name: String, key: String },
    /// `POST /api/read/{name}`.
    MarkRead(String),
    /// `POST /api/messages`.
    Send { to: String, text: String },
    /// `POST /api/contacts`; `typed` is the command line, kept for a failure.
    Add { name: String, typed: String },
    /// `GET /api/whois/{name}`; `open` opens the conversation when it answers.
    Whois {
        name: String,
        typed: String,
        open: bool,
    },
    /// The web app's URL (from `api.json`).
    Web,
    /// Leave.
    Quit,
}

/// What came back from the runner.
#[derive(Clone, Debug)]
pub(crate) enum Reply {
    /// A node already runs on this data dir and answers: use it.
    Attached,
    /// No identity in the data dir: first run.
    FirstRun,
    /// Something takes a while: show this.
    Waiting(String),
    /// `Init` finished.
    Inited(Result<String, String>),
    /// The node in this process started (or failed to). `returning`: started
    /// without a bootstrap address, from saved contacts; `ask`: why to ask for a
    /// bootstrap address (no saved contact answered); `hint`: a line to show.
    Started {
        result: Result<(), String>,
        returning: bool,
        ask: Option<String>,
        hint: Option<String>,
    },
    Status(Result<StatusView, String>),
    Conversations(Result<Vec<ConversationView>, String>),
    History(String, Result<Vec<MessageView>, String>),
    Sent {
        to: String,
        text: String,
        result: Result<String, String>,
    },
    Added {
        typed: String,
        result: Result<ContactView, String>,
    },
    Whois {
        typed: String,
        open: bool,
        result: Result<WhoisView, String>,
    },
    Web(Result<String, String>),
    /// From the event stream.
    Event(ApiEvent),
    /// The event stream broke (it is reconnected in the background).
    EventsDown(String),
}

/// Which screen is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Screen {
    /// Waiting for something (finding the node, starting it): the text says what.
    Wait(String),
    /// First run, or a returning user whose saved contacts do not answer.
    Setup(SetupStep),
    /// The chat: conversations, messages, input line, status bar.
    Chat,
    /// Something that stops the UI from working (the node does not start): Enter leaves.
    Fatal(String),
}

/// The steps of the first-run dialogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SetupStep {
    /// The username.
    Name,
    /// New network or join (`choice`: 0 new, 1 join).
    Choice,
    /// The bootstrap address.
    Address,
    /// Returning user, no saved contact answered: an address or Esc.
    Rejoin,
}

/// A line of input with a cursor (counted in characters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Input {
    pub(crate) text: String,
    pub(crate) cursor: usize,
}

impl Input {
    pub(crate) fn set(&mut self, text: &str) {
        self.text = text.to_string();
        self.cursor = self.text.chars().count();
    }

    fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.text)
    }

    fn byte_at(&self, chars: usize) -> usize {
        self.text
            .char_indices()
            .nth(chars)
            .map(|(i, _)| i)
            .unwrap_or(self.text.len())
    }

    fn insert(&mut self, c: char) {
        let at = self.byte_at(self.cursor);
        self.text.insert(at, c);
        self.cursor += 1;
    }

    fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            let at = self.byte_at(self.cursor);
            self.text.remove(at);
        }
    }

    fn delete(&mut self) {
        if self.cursor < self.text.chars().count() {
            let at = self.byte_at(self.cursor);
            self.text.remove(at);
        }
    }

    /// Edits for a key; true if it was an editing key.
    fn edit(&mut self, key: &KeyEvent) -> bool {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('u') if ctrl => {
                let at = self.byte_at(self.cursor);
                self.text.drain(..at);
                self.cursor = 0;
            }
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = self.text.chars().count(),
            KeyCode::Char(c) if !ctrl && !key.modifiers.contains(KeyModifiers::ALT) => {
                self.insert(c)
            }
            KeyCode::Backspace => self.backspace(),
            KeyCode::Delete => self.delete(),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.text.chars().count()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.text.chars().count(),
            _ => return false,
        }
        true
    }
}

/// How a notice is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Level {
    Info,
    Error,
}

/// A box over the chat (the result of `/add`, `/whois`, `/web`); any key closes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Popup {
    pub(crate) title: String,
    pub(crate) lines: Vec<String>,
}

/// The whole state of the terminal UI.
#[derive(Clone, Debug)]
pub(crate) struct App {
    pub(crate) screen: Screen,
    /// The first-run dialogue's choice (0: new network, 1: join).
    pub(crate) choice: usize,
    /// The line being typed (setup answers, messages, commands).
    pub(crate) input: Input,
    /// The latest status, and whether the node answers.
    pub(crate) status: Option<StatusView>,
    pub(crate) status_error: Option<String>,
    pub(crate) conversations: Vec<ConversationView>,
    /// The open conversation.
    pub(crate) open: Option<String>,
    /// Its messages, oldest first.
    pub(crate) messages: Vec<MessageView>,
    /// Rows scrolled up from the newest message.
    pub(crate) scroll: usize,
    pub(crate) notice: Option<(Level, String)>,
    pub(crate) popup: Option<Popup>,
    pub(crate) help: bool,
    /// Whether the event stream is connected.
    pub(crate) live: bool,
    /// Lines sent or run, for Up/Down.
    pub(crate) history: Vec<String>,
    history_pos: Option<usize>,
    /// A status request is on its way.
    status_pending: bool,
    /// Why the bootstrap address is asked again (a returning user).
    pub(crate) rejoin_reason: String,
    /// The web app's address, to print on the terminal's main screen (the runner takes it).
    pub(crate) print: Option<String>,
    /// Whether the node runs in this process (else: attached to another process's node).
    pub(crate) embedded: bool,
    pub(crate) quit: bool,
}

impl Default for App {
    fn default() -> Self {
        App::new()
    }
}

impl App {
    pub(crate) fn new() -> App {
        App {
            screen: Screen::Wait("looking for a running peerchat node on this data dir…".into()),
            choice: 0,
            input: Input::default(),
            status: None,
            status_error: None,
            conversations: Vec::new(),
            open: None,
            messages: Vec::new(),
            scroll: 0,
            notice: None,
            popup: None,
            help: false,
            live: false,
            history: Vec::new(),
            history_pos: None,
            status_pending: false,
            rejoin_reason: String::new(),
            print: None,
            embedded: false,
            quit: false,
        }
    }

    fn info(&mut self, text: impl Into<String>) {
        self.notice = Some((Level::Info, text.into()));
    }

    fn error(&mut self, text: impl Into<String>) {
        self.notice = Some((Level::Error, text.into()));
    }

    /// Every second or so: keep the status fresh.
    pub(crate) fn on_tick(&mut self) -> Vec<Request> {
        if self.screen == Screen::Chat && !self.status_pending {
            self.status_pending = true;
            return vec![Request::Status];
        }
        Vec::new()
    }

    /// A terminal event.
    pub(crate) fn on_event(&mut self, ev: Event) -> Vec<Request> {
        match ev {
            Event::Key(k) if k.kind != KeyEventKind::Release => self.on_key(k),
            Event::Paste(text) => {
                for c in text.chars() {
                    // A pasted newline would send: keep it as a space.
                    self.input
                        .insert(if c == '\n' || c == '\r' { ' ' } else { c });
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// A key.
    pub(crate) fn on_key(&mut self, key: KeyEvent) -> Vec<Request> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('d')) {
            self.quit = true;
            return vec![Request::Quit];
        }
        match self.screen.clone() {
            Screen::Wait(_) => Vec::new(),
            Screen::Fatal(_) => {
                if matches!(key.code, KeyCode::Enter | KeyCode::Esc | KeyCode::Char('q')) {
                    self.quit = true;
                    return vec![Request::Quit];
                }
                Vec::new()
            }
            Screen::Setup(step) => self.setup_key(step, key),
            Screen::Chat => self.chat_key(key),
        }
    }

    fn setup_key(&mut self, step: SetupStep, key: KeyEvent) -> Vec<Request> {
        if step == SetupStep::Choice {
            match key.code {
                KeyCode::Up | KeyCode::Left | KeyCode::Char('1') | KeyCode::Char('n') => {
                    self.choice = 0
                }
                KeyCode::Down | KeyCode::Right | KeyCode::Char('2') | KeyCode::Char('j') => {
                    self.choice = 1
                }
                KeyCode::Tab => self.choice = 1 - self.choice.min(1),
                KeyCode::Enter => {
                    self.notice = None;
                    if self.choice == 0 {
                        self.screen = Screen::Wait("starting a new network…".into());
                        return vec![Request::Start { bootstrap: None }];
                    }
                    self.screen = Screen::Setup(SetupStep::Address);
                }
                _ => {}
            }
            return Vec::new();
        }
        match key.code {
            KeyCode::Enter => {
                let text = self.input.text.trim().to_string();
                match step {
                    SetupStep::Name => {
                        let text = match normalize_name(&text) {
                            Ok(n) => n,
                            Err(e) => {
                                self.error(e);
                                return Vec::new();
                            }
                        };
                        self.notice = None;
                        self.screen = Screen::Wait(format!("creating user {text}…"));
                        vec![Request::Init { name: text }]
                    }
                    SetupStep::Address | SetupStep::Rejoin => {
                        if let Err(e) = check_address(&text) {
                            self.error(e);
                            return Vec::new();
                        }
                        self.notice = None;
                        self.screen = Screen::Wait(format!("joining the network through {text}…"));
                        if step == SetupStep::Rejoin {
                            vec![Request::Rejoin { bootstrap: text }]
                        } else {
                            vec![Request::Start {
                                bootstrap: Some(text),
                            }]
                        }
                    }
                    SetupStep::Choice => Vec::new(),
                }
            }
            KeyCode::Esc => {
                match step {
                    SetupStep::Address => {
                        self.notice = None;
                        self.screen = Screen::Setup(SetupStep::Choice);
                    }
                    SetupStep::Rejoin => {
                        self.input.take();
                        self.notice = Some((
                            Level::Info,
                            "offline: no saved contact answered; others can join you at your address".into(),
                        ));
                        self.screen = Screen::Chat;
                    }
                    _ => {}
                }
                Vec::new()
            }
            _ => {
                self.input.edit(&key);
                Vec::new()
            }
        }
    }

    fn chat_key(&mut self, key: KeyEvent) -> Vec<Request> {
        if self.help {
            self.help = false;
            return Vec::new();
        }
        if self.popup.is_some() {
            // Any key closes the box; only Esc is used up by it (a box that
            // opens while one types must not eat an Enter or a letter).
            self.popup = None;
            if key.code == KeyCode::Esc {
                return Vec::new();
            }
        }
        match key.code {
            KeyCode::Char('?') if self.input.text.is_empty() => {
                self.help = true;
                Vec::new()
            }
            KeyCode::Esc => {
                self.notice = None;
                Vec::new()
            }
            KeyCode::Enter => self.submit(),
            KeyCode::Up => {
                self.recall(true);
                Vec::new()
            }
            KeyCode::Down => {
                self.recall(false);
                Vec::new()
            }
            KeyCode::PageUp => {
                self.scroll = self.scroll.saturating_add(10);
                Vec::new()
            }
            KeyCode::PageDown => {
                self.scroll = self.scroll.saturating_sub(10);
                Vec::new()
            }
            KeyCode::Tab => self.cycle(true),
            KeyCode::BackTab => self.cycle(false),
            _ => {
                self.input.edit(&key);
                Vec::new()
            }
        }
    }

    fn recall(&mut self, older: bool) {
        if self.history.is_empty() {
            return;
        }
        let pos = match (self.history_pos, older) {
            (None, true) => self.history.len() - 1,
            (None, false) => return,
            (Some(p), true) => p.saturating_sub(1),
            (Some(p), false) if p + 1 >= self.history.len() => {
                self.history_pos = None;
                self.input.take();
                return;
            }
            (Some(p), false) => p + 1,
        };
        self.history_pos = Some(pos);
        let line = self.history[pos].clone();
        self.input.set(&line);
    }

    fn remember(&mut self, line: &str) {
        self.history_pos = None;
        if self.history.last().map(String::as_str) != Some(line) {
            self.history.push(line.to_string());
            if self.history.len() > HISTORY {
                self.history.remove(0);
            }
        }
    }

    /// Gives back a line whose command or send failed: into the input line
    /// if it is empty, else into the history (Up finds it).
    fn give_back(&mut self, typed: &str) -> &'static str {
        if self.input.text.is_empty() {
            self.input.set(typed);
            "your text is back in the input line"
        } else {
            self.remember(typed);
            "your text is in the input history (Up)"
        }
    }

    /// The conversations as listed: the open one first if it has no messages yet.
    pub(crate) fn listed(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        if let Some(open) = &self.open
            && !self.conversations.iter().any(|c| &c.peer == open)
        {
            out.push((open.clone(), 0));
        }
        out.extend(self.conversations.iter().map(|c| {
            (
                c.peer.clone(),
                if Some(&c.peer) == self.open.as_ref() {
                    0
                } else {
                    c.unread
                },
            )
        }));
        out
    }

    fn cycle(&mut self, forward: bool) -> Vec<Request> {
        let list = self.listed();
        if list.is_empty() {
            self.info("no conversations yet: /chat NAME starts one");
            return Vec::new();
        }
        let at = self
            .open
            .as_ref()
            .and_then(|o| list.iter().position(|(p, _)| p == o));
        let next = match (at, forward) {
            (None, _) => 0,
            (Some(i), true) => (i + 1) % list.len(),
            (Some(i), false) => (i + list.len() - 1) % list.len(),
        };
        let name = list[next].0.clone();
        self.open_conversation(&name)
    }

    /// The key of a conversation whose peer has no name here (the node names
    /// it by the start of the key until the user adds the contact).
    pub(crate) fn unnamed_key(&self, name: &str) -> Option<String> {
        self.conversations
            .iter()
            .find(|c| c.peer == name && c.peer != c.peer_key && c.peer_key.starts_with(&c.peer))
            .map(|c| c.peer_key.clone())
    }

    fn history_request(&self, name: &str) -> Request {
        match self.unnamed_key(name) {
            Some(key) => Request::FromKey {
                name: name.to_string(),
                key,
            },
            None => Request::History(name.to_string()),
        }
    }

    fn open_conversation(&mut self, name: &str) -> Vec<Request> {
        if self.open.as_deref() != Some(name) {
            self.messages.clear();
            self.scroll = 0;
        }
        self.open = Some(name.to_string());
        let mut reqs = vec![self.history_request(name)];
        if self.unnamed_key(name).is_some() {
            self.info(
                "a sender who is not a contact (shown by key): ask their name, then /add NAME to answer",
            );
            return reqs;
        }
        if self
            .conversations
            .iter()
            .any(|c| c.peer == name && c.unread > 0)
        {
            reqs.push(Request::MarkRead(name.to_string()));
        }
        reqs
    }

    fn submit(&mut self) -> Vec<Request> {
        let line = self.input.text.clone();
        let trimmed = line.trim();
        if trimmed.is_empty() {
            self.error("empty message: type some text first (or /help)");
            return Vec::new();
        }
        if let Some(cmd) = trimmed.strip_prefix('/') {
            return self.command(cmd, &line);
        }
        let Some(to) = self.open.clone() else {
            self.error("no conversation open: type /chat NAME first (your text stays here)");
            return Vec::new();
        };
        if self.unnamed_key(&to).is_some() {
            self.error(
                "this sender has no name here yet: /add NAME first, then /chat NAME (your text stays here)",
            );
            return Vec::new();
        }
        let bytes = line.len();
        if bytes > MAX_TEXT_BYTES {
            self.error(format!(
                "message too long: {bytes} bytes, at most {MAX_TEXT_BYTES}; shorten it (your text stays here)"
            ));
            return Vec::new();
        }
        self.input.take();
        self.remember(&line);
        self.scroll = 0;
        self.info(format!("sending to {to}…"));
        vec![Request::Send { to, text: line }]
    }

    fn command(&mut self, cmd: &str, typed: &str) -> Vec<Request> {
        let mut words = cmd.split_whitespace();
        let verb = words.next().unwrap_or("").to_ascii_lowercase();
        let arg = words.next().map(str::to_string);
        let extra = words.next().is_some();
        let needs_name = |app: &mut App, verb: &str| -> Option<String> {
            match (&arg, extra) {
                (Some(n), false) => match normalize_name(n) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        app.error(e);
                        None
                    }
                },
                _ => {
                    app.error(format!("usage: /{verb} NAME"));
                    None
                }
            }
        };
        let reqs = match verb.as_str() {
            "quit" | "q" | "exit" => {
                self.quit = true;
                vec![Request::Quit]
            }
            "help" | "h" | "?" => {
                self.help = true;
                Vec::new()
            }
            "web" => vec![Request::Web],
            "chat" | "c" => {
                let Some(name) = needs_name(self, "chat") else {
                    return Vec::new();
                };
                if self.listed().iter().any(|(p, _)| p == &name) {
                    self.notice = None;
                    self.open_conversation(&name)
                } else {
                    self.info(format!("looking up {name}…"));
                    vec![Request::Whois {
                        name,
                        typed: typed.to_string(),
                        open: true,
                    }]
                }
            }
            "whois" | "w" => {
                let Some(name) = needs_name(self, "whois") else {
                    return Vec::new();
                };
                self.info(format!("looking up {name}…"));
                vec![Request::Whois {
                    name,
                    typed: typed.to_string(),
                    open: false,
                }]
            }
            "add" | "a" => {
                let Some(name) = needs_name(self, "add") else {
                    return Vec::new();
                };
                self.info(format!("looking up {name}…"));
                vec![Request::Add {
                    name,
                    typed: typed.to_string(),
                }]
            }
            _ => {
                self.error(format!(
                    "unknown command /{verb}: /chat /add /whois /web /help /quit"
                ));
                return Vec::new();
            }
        };
        self.input.take();
        self.remember(typed);
        reqs
    }

    /// An answer from the runner.
    pub(crate) fn on_reply(&mut self, r: Reply) -> Vec<Request> {
        match r {
            Reply::Attached => {
                self.embedded = false;
                self.screen = Screen::Chat;
                self.info("attached to the node already running on this data dir");
                self.status_pending = true;
                return vec![Request::Status, Request::Conversations];
            }
            Reply::Waiting(text) => {
                self.embedded = true;
                self.screen = Screen::Wait(text);
            }
            Reply::FirstRun => {
                self.embedded = true;
                self.input.take();
                self.screen = Screen::Setup(SetupStep::Name);
            }
            Reply::Inited(Ok(_)) => {
                self.input.take();
                self.screen = Screen::Setup(SetupStep::Choice);
            }
            Reply::Inited(Err(e)) => {
                self.screen = Screen::Setup(SetupStep::Name);
                self.error(e);
            }
            Reply::Started {
                result: Ok(()),
                ask,
                hint,
                ..
            } => {
                self.embedded = true;
                self.input.take();
                self.screen = match ask {
                    Some(reason) => {
                        self.rejoin_reason = reason;
                        Screen::Setup(SetupStep::Rejoin)
                    }
                    None => Screen::Chat,
                };
                self.status_pending = true;
                if let Some(h) = hint {
                    self.info(h);
                }
                return vec![Request::Status, Request::Conversations];
            }
            Reply::Started {
                result: Err(e),
                returning,
                ..
            } => {
                // A bad bootstrap address may be typed again; anything else stops here.
                if matches!(self.screen, Screen::Wait(_))
                    && !returning
                    && !self.input.text.is_empty()
                {
                    self.screen = Screen::Setup(SetupStep::Address);
                    self.error(e);
                } else {
                    self.screen = Screen::Fatal(e);
                }
            }
            Reply::Status(Ok(s)) => {
                self.status_pending = false;
                if self.status_error.take().is_some() {
                    self.info("the node answers again");
                }
                self.status = Some(s);
            }
            Reply::Status(Err(e)) => {
                self.status_pending = false;
                self.status_error = Some(e);
            }
            Reply::Conversations(Ok(c)) => self.conversations = c,
            Reply::Conversations(Err(e)) => self.error(format!("conversations: {e}")),
            Reply::History(name, Ok(msgs)) => {
                if self.open.as_deref() == Some(name.as_str()) {
                    self.messages = msgs;
                }
            }
            Reply::History(name, Err(e)) => {
                if self.open.as_deref() == Some(name.as_str()) {
                    self.error(format!("conversation with {name}: {e}"));
                }
            }
            Reply::Sent {
                to, result: Ok(_), ..
            } => {
                if matches!(&self.notice, Some((Level::Info, n)) if n.starts_with("sending to")) {
                    self.notice = None;
                }
                let mut reqs = vec![Request::Conversations];
                if self.open.as_deref() == Some(to.as_str()) {
                    reqs.push(self.history_request(&to));
                }
                return reqs;
            }
            Reply::Sent {
                to,
                text,
                result: Err(e),
            } => {
                let kept = self.give_back(&text);
                self.error(format!("not sent to {to}: {e} ({kept})"));
            }
            Reply::Added { result: Ok(c), .. } => {
                self.notice = None;
                // The list now names them; an open conversation shown by their key becomes theirs.
                let mut reqs = vec![Request::Conversations];
                if let Some(o) = self.open.clone()
                    && self.unnamed_key(&o).as_deref() == Some(c.key.as_str())
                {
                    self.open = Some(c.name.clone());
                    reqs.push(Request::History(c.name.clone()));
                    reqs.push(Request::MarkRead(c.name.clone()));
                }
                self.popup = Some(Popup {
                    title: format!("added {}", c.name),
                    lines: vec![
                        format!("fingerprint  {}", c.fingerprint),
                        String::new(),
                        format!(
                            "Compare it with {} in person or over another channel: the same digits on both sides mean nobody is in between.",
                            c.name
                        ),
                        String::new(),
                        format!("/chat {} to write to them. Any key closes this.", c.name),
                    ],
                });
                return reqs;
            }
            Reply::Added {
                typed,
                result: Err(e),
            } => {
                let kept = self.give_back(&typed);
                self.error(format!("{e} ({kept})"));
            }
            Reply::Whois {
                open: true,
                result: Ok(w),
                ..
            } => {
                self.info(format!(
                    "chat with {} · fingerprint {}",
                    w.name, w.fingerprint
                ));
                return self.open_conversation(&w.name);
            }
            Reply::Whois {
                open: false,
                result: Ok(w),
                ..
            } => {
                self.notice = None;
                let mut lines = vec![
                    format!("fingerprint  {}", w.fingerprint),
                    format!("key          {}", w.key),
                ];
                match w.presence_ms {
                    Some(ms) => {
                        lines.push(format!("chat at      {}", list_or_none(&w.chat_addrs)));
                        lines.push(format!("dht at       {}", list_or_none(&w.dht_addrs)));
                        lines.push(format!("seen         {} UTC", super::ui::utc_minutes(ms)));
                    }
                    None => lines.push(format!(
                        "addresses    none known ({} may be offline)",
                        w.name
                    )),
                }
                self.popup = Some(Popup {
                    title: format!("whois {}", w.name),
                    lines,
                });
            }
            Reply::Whois {
                typed,
                result: Err(e),
                ..
            } => {
                let kept = self.give_back(&typed);
                self.error(format!("{e} ({kept})"));
            }
            Reply::Web(Ok(url)) => {
                // Printed on the terminal's main screen, where a line longer
                // than the screen wraps softly and copies whole.
                self.info("the web app's address is printed on the terminal, above the chat (it stays there after /quit)");
                self.print = Some(url);
            }
            Reply::Web(Err(e)) => self.error(format!("web app: {e}")),
            Reply::Event(ev) => return self.on_api_event(ev),
            Reply::EventsDown(e) => {
                if self.live {
                    self.error(format!("live updates stopped ({e}); reconnecting…"));
                }
                self.live = false;
            }
        }
        Vec::new()
    }

    fn on_api_event(&mut self, ev: ApiEvent) -> Vec<Request> {
        match ev {
            ApiEvent::Ready | ApiEvent::Lagged { .. } => {
                self.live = true;
                let mut reqs = vec![Request::Conversations];
                if let Some(o) = &self.open {
                    reqs.push(self.history_request(o));
                }
                reqs
            }
            ApiEvent::Chat(ChatEvent::Message(m)) => {
                let mut reqs = vec![Request::Conversations];
                if self.open.as_deref() == Some(m.peer.as_str()) {
                    if m.direction == "in" && self.unnamed_key(&m.peer).is_none() {
                        reqs.push(Request::MarkRead(m.peer.clone()));
                    }
                    if let Some(old) = self.messages.iter_mut().find(|x| x.id == m.id) {
                        *old = m;
                    } else {
                        self.messages.push(m);
                        if self.messages.len() > HISTORY_LIMIT {
                            self.messages.remove(0);
                        }
                    }
                }
                reqs
            }
            ApiEvent::Chat(ChatEvent::State { id, state }) => {
                if let Some(m) = self.messages.iter_mut().find(|m| m.id == id) {
                    m.state = state.clone();
                }
                for c in &mut self.conversations {
                    if c.last.id == id {
                        c.last.state = state.clone();
                    }
                }
                Vec::new()
            }
            ApiEvent::Other { .. } => Vec::new(),
        }
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The username rules (as the node checks them): returns the normalized name.
pub(crate) fn normalize_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("type a username (letters a-z, digits, '_', '-', '.')".into());
    }
    let len = name.chars().count();
    if len > MAX_NAME {
        return Err(format!(
            "a username has at most {MAX_NAME} characters ({len} typed)"
        ));
    }
    let mut out = String::with_capacity(name.len());
    for (pos, ch) in name.chars().enumerate() {
        let c = ch.to_ascii_lowercase();
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.')) {
            return Err(format!(
                "{ch:?} is not allowed in a username: use letters a-z, digits, '_', '-', '.'"
            ));
        }
        if pos == 0 && !c.is_ascii_alphanumeric() {
            return Err("a username starts with a letter or a digit".into());
        }
        out.push(c);
    }
    Ok(out)
}

/// A bootstrap address: `IP:PORT` or `HOST:PORT`.
pub(crate) fn check_address(addr: &str) -> Result<(), String> {
    let bad = || format!("{addr:?} is not an address: type IP:PORT, like 192.0.2.7:7420");
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty()
        || host.contains(char::is_whitespace)
        || port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad());
    }
    Ok(())
}
