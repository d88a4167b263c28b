//! Rendering tests (ratatui's test backend) and the UI's reactions to keys and answers.

use peerchat_node::api::ApiEvent;
use peerchat_node::chat::{ChatEvent, ConversationView, MessageView, StatusView};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::buffer::Buffer;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::style::Color;

use super::app::{App, Level, MAX_TEXT_BYTES, Reply, Request, Screen, SetupStep};
use super::ui::{self, Theme};

const COLOR: Theme = Theme { color: true };
const NO_COLOR: Theme = Theme { color: false };
/// 2026-11-25 12:34 UTC.
const T: i64 = 1_795_610_040_000;

fn render(app: &App, theme: Theme, w: u16, h: u16) -> Buffer {
    let mut term = match Terminal::new(TestBackend::new(w, h)) {
        Ok(t) => t,
        Err(e) => panic!("test backend: {e}"),
    };
    if let Err(e) = term.draw(|f| ui::draw(f, app, &theme)) {
        panic!("draw: {e}");
    }
    term.backend().buffer().clone()
}

fn rows(buf: &Buffer) -> Vec<String> {
    let a = buf.area;
    (0..a.height)
        .map(|y| {
            (0..a.width)
                .map(|x| buf.cell((x, y)).map_or(" ", |c| c.symbol()))
                .collect::<String>()
        })
        .collect()
}

fn screen_text(buf: &Buffer) -> String {
    rows(buf).join("\n")
}

fn msg(id: &str, peer: &str, out: bool, text: &str, state: &str, sent_ms: i64) -> MessageView {
    MessageView {
        id: id.into(),
        peer: peer.into(),
        peer_key: "00".into(),
        direction: if out { "out" } else { "in" }.into(),
        from: if out { "me".into() } else { peer.into() },
        text: text.into(),
        sent_ms,
        received_ms: sent_ms,
        state: state.into(),
    }
}

fn conv(peer: &str, unread: u64) -> ConversationView {
    ConversationView {
        peer: peer.into(),
        peer_key: "00".into(),
        last: msg("ff", peer, false, "last", "delivered", T),
        unread,
    }
}

fn status() -> StatusView {
    StatusView {
        name: "alice".into(),
        key: "ab".into(),
        fingerprint: "0123 4567 89ab cdef 0123 4567 89ab cdef".into(),
        node_id: "cd".into(),
        listen: "0.0.0.0:7420".into(),
        external: None,
        routing_table: 7,
        online: true,
        outbox: 2,
        relay_queue: 1,
        unread: 3,
        name_claimed: true,
        refused_envelopes: 0,
    }
}

/// A chat screen: conversations with bob (3 unread) and carol (open), four
/// messages in all four delivery states.
fn chat_app() -> App {
    let mut app = App::new();
    app.screen = Screen::Chat;
    app.status = Some(status());
    app.live = true;
    app.conversations = vec![conv("bob", 3), conv("carol", 0), conv("dave", 12)];
    app.open = Some("carol".into());
    app.messages = vec![
        msg("01", "carol", false, "hello alice", "read", T),
        msg("02", "carol", true, "first reply", "read", T + 60_000),
        msg(
            "03",
            "carol",
            true,
            "second reply",
            "delivered",
            T + 120_000,
        ),
        msg("04", "carol", true, "third reply", "relayed", T + 180_000),
        msg("05", "carol", true, "fourth reply", "queued", T + 240_000),
    ];
    app
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
}

fn row_with<'a>(rows: &'a [String], needle: &str) -> Option<&'a String> {
    rows.iter().find(|r| r.contains(needle))
}

#[test]
fn conversation_list_shows_unread_counts() {
    let buf = render(&chat_app(), COLOR, 80, 24);
    let rows = rows(&buf);
    let bob = row_with(&rows, " bob").map(String::as_str).unwrap_or("");
    assert!(bob.contains("(3)"), "bob's row: {bob:?}");
    let dave = row_with(&rows, " dave").map(String::as_str).unwrap_or("");
    assert!(dave.contains("(12)"), "dave's row: {dave:?}");
    // The open conversation shows no unread count (it is being read).
    let carol = row_with(&rows, " carol ").map(String::as_str).unwrap_or("");
    assert!(!carol.contains('('), "carol's row: {carol:?}");
    // The list is in the left column, above the message pane's contents.
    assert!(rows[0].starts_with("┌ Chats"));
}

#[test]
fn messages_show_time_author_and_delivery_state() {
    let buf = render(&chat_app(), COLOR, 80, 24);
    let rows = rows(&buf);
    let text = rows.join("\n");
    assert!(text.contains("carol · times UTC"));
    assert!(text.contains("2026-11-25"), "{text}");
    let first = row_with(&rows, "hello alice")
        .map(String::as_str)
        .unwrap_or("");
    assert!(first.contains("12:34 carol: hello alice"), "{first:?}");
    for (needle, time, state) in [
        ("first reply", "12:35", "read"),
        ("second reply", "12:36", "delivered"),
        ("third reply", "12:37", "relayed"),
        ("fourth reply", "12:38", "queued"),
    ] {
        let row = row_with(&rows, needle).map(String::as_str).unwrap_or("");
        assert!(row.contains(&format!("{time} me: {needle}")), "{row:?}");
        let state_at = row.find(&format!("{state}│"));
        assert!(state_at.is_some(), "state {state} at the end of {row:?}");
    }
    // An incoming message shows no delivery state.
    assert!(!first.contains("read"), "{first:?}");
}

#[test]
fn status_bar_shows_the_network() {
    let buf = render(&chat_app(), COLOR, 80, 24);
    let rows = rows(&buf);
    let bar = &rows[23];
    assert!(bar.starts_with(" alice "), "{bar:?}");
    assert!(bar.contains("online"), "{bar:?}");
    assert!(bar.contains("7 peers"), "{bar:?}");
    assert!(bar.contains("outbox 2"), "{bar:?}");
    assert!(bar.contains("relay queue 1"), "{bar:?}");

    let mut off = chat_app();
    off.status = Some(StatusView {
        online: false,
        routing_table: 0,
        ..status()
    });
    off.live = false;
    let rows2 = super::tests::rows(&render(&off, COLOR, 80, 24));
    assert!(rows2[23].contains("offline"), "{:?}", rows2[23]);
    assert!(rows2[23].contains("0 peers"), "{:?}", rows2[23]);
    assert!(rows2[23].contains("no live updates"), "{:?}", rows2[23]);

    let mut down = chat_app();
    down.status_error = Some("no peerchat is running with data dir /x".into());
    let rows3 = super::tests::rows(&render(&down, COLOR, 80, 24));
    assert!(rows3[23].contains("node not answering"), "{:?}", rows3[23]);
}

#[test]
fn fits_80x24() {
    let mut app = chat_app();
    type_text(&mut app, "draft");
    let rows = rows(&render(&app, COLOR, 80, 24));
    assert_eq!(rows.len(), 24);
    assert!(rows.iter().all(|r| r.chars().count() == 80));
    // Top to bottom: panes, notice, input box, status bar.
    assert!(rows[0].starts_with("┌ Chats"));
    assert!(rows[0].contains("┐┌ carol"));
    assert!(rows[18].starts_with("└"));
    assert!(rows[19].trim().is_empty());
    assert!(rows[20].starts_with("┌ message to carol"), "{:?}", rows[20]);
    assert!(rows[21].starts_with("│draft"), "{:?}", rows[21]);
    assert!(rows[23].contains("? help"));
    // The newest message is on screen.
    assert!(row_with(&rows, "fourth reply").is_some());
}

#[test]
fn help_screen_lists_commands() {
    let mut app = chat_app();
    let before = screen_text(&render(&app, COLOR, 80, 24));
    assert!(!before.contains("/whois NAME"));
    app.on_key(key(KeyCode::Char('?')));
    assert!(app.help);
    let text = screen_text(&render(&app, COLOR, 80, 24));
    for c in [
        "Help",
        "/chat NAME",
        "/add NAME",
        "/whois NAME",
        "/web",
        "/quit",
        "Ctrl-C",
    ] {
        assert!(text.contains(c), "{c} missing:\n{text}");
    }
    // Any key closes it; '?' with text typed is just a character.
    app.on_key(key(KeyCode::Char('x')));
    assert!(!app.help);
    type_text(&mut app, "why?");
    assert!(!app.help);
    assert_eq!(app.input.text, "why?");
}

fn colours(buf: &Buffer) -> usize {
    buf.content()
        .iter()
        .filter(|c| {
            c.fg != Color::Reset || c.bg != Color::Reset || c.underline_color != Color::Reset
        })
        .count()
}

#[test]
fn no_color_means_no_colour_at_all() {
    let mut app = chat_app();
    app.notice = Some((Level::Error, "no such user: zed".into()));
    assert!(
        colours(&render(&app, COLOR, 80, 24)) > 0,
        "the colour theme has colours"
    );
    assert_eq!(colours(&render(&app, NO_COLOR, 80, 24)), 0);
    app.help = true;
    assert_eq!(colours(&render(&app, NO_COLOR, 80, 24)), 0);
    for step in [
        SetupStep::Name,
        SetupStep::Choice,
        SetupStep::Address,
        SetupStep::Rejoin,
    ] {
        let mut s = App::new();
        s.screen = Screen::Setup(step);
        assert_eq!(colours(&render(&s, NO_COLOR, 80, 24)), 0, "{step:?}");
    }
    // The selection stays visible without colour (reverse video).
    let buf = render(&app, NO_COLOR, 80, 24);
    let reversed = buf
        .content()
        .iter()
        .filter(|c| c.modifier.contains(ratatui::style::Modifier::REVERSED))
        .count();
    assert!(reversed > 0);
}

#[test]
fn first_run_asks_name_then_new_or_join() {
    let mut app = App::new();
    assert!(app.on_reply(Reply::FirstRun).is_empty());
    let text = screen_text(&render(&app, COLOR, 80, 24));
    assert!(text.contains("Choose a username"), "{text}");

    // A bad name: an error, the text stays.
    type_text(&mut app, "Bad Name");
    assert!(app.on_key(key(KeyCode::Enter)).is_empty());
    assert_eq!(app.input.text, "Bad Name");
    assert!(matches!(&app.notice, Some((Level::Error, _))));
    assert!(screen_text(&render(&app, COLOR, 80, 24)).contains("not allowed"));

    for _ in 0.."Bad Name".len() {
        app.on_key(key(KeyCode::Backspace));
    }
    type_text(&mut app, "Alice");
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        vec![Request::Init {
            name: "alice".into()
        }]
    );
    app.on_reply(Reply::Inited(Ok("alice".into())));
    assert_eq!(app.screen, Screen::Setup(SetupStep::Choice));
    let text = screen_text(&render(&app, COLOR, 80, 24));
    assert!(text.contains("start a new network"), "{text}");
    assert!(text.contains("join: bootstrap address"), "{text}");

    app.on_key(key(KeyCode::Down));
    assert!(app.on_key(key(KeyCode::Enter)).is_empty());
    assert_eq!(app.screen, Screen::Setup(SetupStep::Address));
    type_text(&mut app, "not an address");
    assert!(app.on_key(key(KeyCode::Enter)).is_empty());
    assert!(matches!(&app.notice, Some((Level::Error, e)) if e.contains("IP:PORT")));
    app.input.set("192.0.2.7:7420");
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        vec![Request::Start {
            bootstrap: Some("192.0.2.7:7420".into())
        }]
    );
    let reqs = app.on_reply(Reply::Started {
        result: Ok(()),
        returning: false,
        ask: None,
        hint: Some("joined".into()),
    });
    assert_eq!(app.screen, Screen::Chat);
    assert!(reqs.contains(&Request::Status) && reqs.contains(&Request::Conversations));
}

#[test]
fn returning_user_without_peers_is_asked_for_an_address() {
    let mut app = App::new();
    app.on_reply(Reply::Started {
        result: Ok(()),
        returning: true,
        ask: Some("None of your saved contacts answered.".into()),
        hint: None,
    });
    assert_eq!(app.screen, Screen::Setup(SetupStep::Rejoin));
    let text = screen_text(&render(&app, COLOR, 80, 24));
    assert!(
        text.contains("None of your saved contacts answered."),
        "{text}"
    );
    type_text(&mut app, "192.0.2.7:7420");
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        vec![Request::Rejoin {
            bootstrap: "192.0.2.7:7420".into()
        }]
    );
    // Or Esc: go on alone.
    app.on_reply(Reply::Started {
        result: Ok(()),
        returning: true,
        ask: Some("No contacts were saved by an earlier run.".into()),
        hint: None,
    });
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.screen, Screen::Chat);

    // A saved contact answered: straight in, no question.
    let mut app = App::new();
    app.on_reply(Reply::Started {
        result: Ok(()),
        returning: true,
        ask: None,
        hint: None,
    });
    assert_eq!(app.screen, Screen::Chat);
}

#[test]
fn bad_messages_keep_the_text() {
    let mut app = chat_app();
    // Empty.
    type_text(&mut app, "   ");
    assert!(app.on_key(key(KeyCode::Enter)).is_empty());
    assert!(matches!(&app.notice, Some((Level::Error, e)) if e.contains("empty")));
    // Over-long.
    let long = "é".repeat(MAX_TEXT_BYTES / 2 + 1);
    app.input.set(&long);
    assert!(app.on_key(key(KeyCode::Enter)).is_empty());
    assert_eq!(app.input.text, long);
    assert!(matches!(&app.notice, Some((Level::Error, e)) if e.contains("too long")));
    let text = screen_text(&render(&app, COLOR, 80, 24));
    assert!(text.contains("962/960 bytes"), "{text}");
    // Exactly the limit goes.
    let max = "a".repeat(MAX_TEXT_BYTES);
    app.input.set(&max);
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        vec![Request::Send {
            to: "carol".into(),
            text: max.clone()
        }]
    );
    assert!(app.input.text.is_empty());
    // The node refuses it: the text comes back.
    app.on_reply(Reply::Sent {
        to: "carol".into(),
        text: max.clone(),
        result: Err("no such user: carol".into()),
    });
    assert_eq!(app.input.text, max);
    assert!(matches!(&app.notice, Some((Level::Error, e)) if e.contains("no such user")));

    // Without an open conversation.
    let mut none = chat_app();
    none.open = None;
    type_text(&mut none, "hi");
    assert!(none.on_key(key(KeyCode::Enter)).is_empty());
    assert_eq!(none.input.text, "hi");
}

#[test]
fn commands() {
    let mut app = chat_app();
    type_text(&mut app, "/frobnicate");
    assert!(app.on_key(key(KeyCode::Enter)).is_empty());
    assert_eq!(app.input.text, "/frobnicate");
    assert!(matches!(&app.notice, Some((Level::Error, e)) if e.contains("unknown command")));

    app.input.set("/chat");
    assert!(app.on_key(key(KeyCode::Enter)).is_empty());
    assert!(matches!(&app.notice, Some((Level::Error, e)) if e.contains("usage: /chat NAME")));

    // A known conversation opens at once and is marked read.
    app.input.set("/chat bob");
    let reqs = app.on_key(key(KeyCode::Enter));
    assert_eq!(app.open.as_deref(), Some("bob"));
    assert!(reqs.contains(&Request::History("bob".into())));
    assert!(reqs.contains(&Request::MarkRead("bob".into())));

    // An unknown one is looked up first; a failure gives the line back.
    app.input.set("/chat zed");
    let reqs = app.on_key(key(KeyCode::Enter));
    assert!(matches!(&reqs[..], [Request::Whois { name, open: true, .. }] if name == "zed"));
    assert!(app.input.text.is_empty());
    app.on_reply(Reply::Whois {
        typed: "/chat zed".into(),
        open: true,
        result: Err("no such user: zed".into()),
    });
    assert_eq!(app.input.text, "/chat zed");
    assert_eq!(app.open.as_deref(), Some("bob"));

    // /add shows the fingerprint to compare.
    app.input.set("/add erin");
    let reqs = app.on_key(key(KeyCode::Enter));
    assert!(matches!(&reqs[..], [Request::Add { name, .. }] if name == "erin"));
    app.on_reply(Reply::Added {
        typed: "/add erin".into(),
        result: Ok(peerchat_node::chat::ContactView {
            name: "erin".into(),
            key: "ee".into(),
            fingerprint: "1111 2222 3333 4444 5555 6666 7777 8888".into(),
        }),
    });
    let text = screen_text(&render(&app, COLOR, 80, 24));
    assert!(text.contains("added erin"), "{text}");
    assert!(
        text.contains("1111 2222 3333 4444 5555 6666 7777 8888"),
        "{text}"
    );

    // /web hands the URL with its token to the runner, to print on the terminal.
    app.on_key(key(KeyCode::Esc));
    app.input.set("/web");
    assert_eq!(app.on_key(key(KeyCode::Enter)), vec![Request::Web]);
    let url = format!("http://127.0.0.1:4242/#token={}", "ab".repeat(32));
    app.on_reply(Reply::Web(Ok(url.clone())));
    assert_eq!(app.print.as_deref(), Some(url.as_str()));
    app.on_reply(Reply::Web(Err("no running peerchat node".into())));
    assert!(matches!(&app.notice, Some((Level::Error, e)) if e.contains("no running")));

    app.on_key(key(KeyCode::Esc));
    app.input.set("/quit");
    assert_eq!(app.on_key(key(KeyCode::Enter)), vec![Request::Quit]);
    assert!(app.quit);
}

#[test]
fn events_update_states_and_messages() {
    let mut app = chat_app();
    app.on_reply(Reply::Event(ApiEvent::Chat(ChatEvent::State {
        id: "05".into(),
        state: "delivered".into(),
    })));
    let rows = rows(&render(&app, COLOR, 80, 24));
    let row = row_with(&rows, "fourth reply")
        .map(String::as_str)
        .unwrap_or("");
    assert!(row.contains("delivered│"), "{row:?}");

    // A message in the open conversation shows at once and is marked read.
    let reqs = app.on_reply(Reply::Event(ApiEvent::Chat(ChatEvent::Message(msg(
        "06",
        "carol",
        false,
        "news!",
        "delivered",
        T + 300_000,
    )))));
    assert!(reqs.contains(&Request::MarkRead("carol".into())));
    assert!(screen_text(&render(&app, COLOR, 80, 24)).contains("carol: news!"));

    // One elsewhere refreshes the list (for its unread count) only.
    let reqs = app.on_reply(Reply::Event(ApiEvent::Chat(ChatEvent::Message(msg(
        "07",
        "bob",
        false,
        "psst",
        "delivered",
        T + 360_000,
    )))));
    assert_eq!(reqs, vec![Request::Conversations]);
    assert!(!screen_text(&render(&app, COLOR, 80, 24)).contains("psst"));
}

#[test]
fn long_messages_wrap_and_scroll() {
    let mut app = chat_app();
    let long = "word ".repeat(120);
    app.messages
        .push(msg("08", "carol", true, long.trim(), "queued", T + 400_000));
    let rows = rows(&render(&app, COLOR, 80, 24));
    // Wrapped rows are indented under the text, and the state ends the last one.
    let last = rows
        .iter()
        .rev()
        .find(|r| r.contains("queued│"))
        .map(String::as_str)
        .unwrap_or("");
    assert!(last.contains("word"), "{rows:#?}");
    assert!(
        rows.iter().filter(|r| r.contains("│      word")).count() >= 3,
        "{rows:#?}"
    );
    // PgUp shows older messages.
    assert!(row_with(&rows, "hello alice").is_none());
    app.on_key(key(KeyCode::PageUp));
    let rows = super::tests::rows(&render(&app, COLOR, 80, 24));
    assert!(row_with(&rows, "hello alice").is_some(), "{rows:#?}");
    assert!(row_with(&rows, "more (PgDn)").is_some());
}

#[test]
fn wrapping() {
    assert_eq!(ui::wrap("a bc def", 4, 4), vec!["a bc", "def"]);
    assert_eq!(ui::wrap("abcdefghij", 4, 4), vec!["abcd", "efgh", "ij"]);
    assert_eq!(ui::wrap("x\ny", 10, 10), vec!["x", "y"]);
    assert_eq!(ui::wrap("", 10, 10), vec![""]);
    assert_eq!(ui::wrap("aa bb cc", 2, 5), vec!["aa", "bb cc"]);
}

#[test]
fn peer_text_cannot_drive_the_terminal() {
    let mut app = chat_app();
    app.messages = vec![msg("09", "carol", false, "evil\x1b[2Jtext", "read", T)];
    let text = screen_text(&render(&app, COLOR, 80, 24));
    assert!(text.contains("evil\\u{1b}[2Jtext"), "{text}");
    assert!(!text.contains('\x1b'));
}

#[test]
fn a_box_that_opens_while_typing_eats_no_keys() {
    let mut app = chat_app();
    type_text(&mut app, "hel");
    app.on_reply(whois_box());
    assert!(app.popup.is_some());
    let text = screen_text(&render(&app, COLOR, 80, 24));
    assert!(text.contains("whois bob"), "{text}");
    assert!(text.contains("chat at      192.0.2.7:7420"), "{text}");
    assert!(text.contains("1111 2222 3333 4444"), "{text}");
    type_text(&mut app, "lo");
    assert!(app.popup.is_none());
    assert_eq!(app.input.text, "hello");
    app.on_reply(whois_box());
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        vec![Request::Send {
            to: "carol".into(),
            text: "hello".into()
        }]
    );
    // Esc only closes it.
    app.on_reply(whois_box());
    type_text(&mut app, "x");
    app.on_reply(whois_box());
    app.on_key(key(KeyCode::Esc));
    assert!(app.popup.is_none());
    assert_eq!(app.input.text, "x");
}

#[test]
fn a_sender_known_only_by_key() {
    let key = "4fe6af882f3caec0".repeat(4);
    let mut app = chat_app();
    app.open = None;
    app.conversations = vec![ConversationView {
        peer: key[..16].to_string(),
        peer_key: key.clone(),
        last: msg("aa", &key[..16], false, "hi, it's bob", "delivered", T),
        unread: 1,
    }];
    // Opening it reads the inbox for that key (the API has no history by key).
    let reqs = app.on_key(key_ev(KeyCode::Tab));
    assert_eq!(
        reqs,
        vec![Request::FromKey {
            name: key[..16].to_string(),
            key: key.clone()
        }]
    );
    // No name: answering needs /add NAME first; the text stays.
    type_text(&mut app, "hello?");
    assert!(app.on_key(key_ev(KeyCode::Enter)).is_empty());
    assert_eq!(app.input.text, "hello?");
    assert!(matches!(&app.notice, Some((Level::Error, e)) if e.contains("/add NAME")));
    // Adding them names the open conversation.
    let reqs = app.on_reply(Reply::Added {
        typed: "/add bob".into(),
        result: Ok(peerchat_node::chat::ContactView {
            name: "bob".into(),
            key: key.clone(),
            fingerprint: "1111 2222 3333 4444 5555 6666 7777 8888".into(),
        }),
    });
    assert_eq!(app.open.as_deref(), Some("bob"));
    assert!(reqs.contains(&Request::History("bob".into())));
    assert!(reqs.contains(&Request::Conversations));
}

fn key_ev(c: KeyCode) -> KeyEvent {
    key(c)
}

/// An answer that opens a box (`/whois`).
fn whois_box() -> Reply {
    Reply::Whois {
        typed: "/whois bob".into(),
        open: false,
        result: Ok(peerchat_node::chat::WhoisView {
            name: "bob".into(),
            key: "bb".into(),
            fingerprint: "1111 2222 3333 4444 5555 6666 7777 8888".into(),
            dht_addrs: vec!["192.0.2.7:7420".into()],
            chat_addrs: vec!["192.0.2.7:7420".into()],
            presence_ms: Some(T),
        }),
    }
}

#[test]
fn wide_characters_keep_columns() {
    let mut app = chat_app();
    app.messages = vec![msg("10", "carol", true, &"漢字".repeat(30), "delivered", T)];
    let rows = rows(&render(&app, COLOR, 80, 24));
    // Wrapped by columns (wide characters take two): nothing is cut off at
    // the pane's edge, and the state ends the last row at the border.
    let shown: usize = rows
        .iter()
        .map(|r| r.chars().filter(|c| *c == '漢' || *c == '字').count())
        .sum();
    assert_eq!(shown, 60, "{rows:#?}");
    let last = rows
        .iter()
        .rev()
        .find(|r| r.contains("delivered"))
        .map(String::as_str)
        .unwrap_or("");
    assert!(last.contains("delivered│"), "{rows:#?}");
    // The input line scrolls by columns too.
    app.input.set(&"字".repeat(100));
    let rows = super::tests::rows(&render(&app, COLOR, 80, 24));
    // (The test buffer shows a wide character's second column as a space.)
    assert!(rows[21].starts_with("│字 字"), "{:?}", rows[21]);
    assert_eq!(rows[21].chars().filter(|c| *c == '字').count(), 38);
}

#[test]
fn any_size_draws() {
    let mut screens = vec![chat_app()];
    let mut help = chat_app();
    help.help = true;
    screens.push(help);
    let mut boxed = chat_app();
    boxed.on_reply(whois_box());
    screens.push(boxed);
    for step in [
        SetupStep::Name,
        SetupStep::Choice,
        SetupStep::Address,
        SetupStep::Rejoin,
    ] {
        let mut s = App::new();
        s.screen = Screen::Setup(step);
        screens.push(s);
    }
    let mut fatal = App::new();
    fatal.screen = Screen::Fatal("cannot listen".into());
    screens.push(fatal);
    screens.push(App::new());
    for app in &screens {
        for (w, h) in [(1, 1), (10, 4), (30, 8), (59, 12), (80, 24), (200, 60)] {
            let buf = render(app, COLOR, w, h);
            assert_eq!(buf.area.width, w);
        }
    }
}
