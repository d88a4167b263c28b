//! Drawing the terminal UI from its state (no I/O, so the test backend can check it).

use peerchat_node::chat::MessageView;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Padding, Paragraph, Wrap};

use super::app::{App, Level, MAX_TEXT_BYTES, Screen, SetupStep};

/// Styles: with colours, or (`NO_COLOR`) with none at all, only bold and reverse video.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Theme {
    pub(crate) color: bool,
}

impl Theme {
    /// Colours unless `NO_COLOR` is set to anything but the empty string (no-color.org).
    pub(crate) fn from_env() -> Theme {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Theme { color: !no_color }
    }

    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    fn accent(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    fn error(&self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    fn dim(&self) -> Style {
        self.fg(Color::DarkGray)
    }

    fn me(&self) -> Style {
        self.fg(Color::Green).add_modifier(Modifier::BOLD)
    }

    fn peer(&self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    fn selected(&self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD)
    }

    fn bar(&self) -> Style {
        if self.color {
            Style::new().bg(Color::Blue).fg(Color::White)
        } else {
            Style::new().add_modifier(Modifier::REVERSED)
        }
    }

    fn state(&self, state: &str) -> Style {
        match state {
            "queued" => self.fg(Color::Yellow),
            "relayed" => self.fg(Color::Magenta),
            "delivered" => self.fg(Color::Green),
            "read" => self.fg(Color::Cyan),
            _ => Style::new(),
        }
    }
}

/// `YYYY-MM-DD HH:MM` in UTC.
pub(crate) fn utc_minutes(ms: i64) -> String {
    crate::chat_cmd::utc_minutes(ms)
}

/// Text from the network as it may go on screen: no control characters, tabs as spaces.
fn clean(text: &str) -> String {
    crate::chat_cmd::safe(text).replace('\t', "    ")
}

/// Columns a text takes on a terminal (wide characters take two).
fn width_of(s: &str) -> usize {
    Span::raw(s).width()
}

fn char_width(c: char) -> usize {
    let mut buf = [0u8; 4];
    width_of(c.encode_utf8(&mut buf))
}

/// The longest start of `s` at most `cols` wide (at least one character, so that wrapping ends).
fn split_cols(s: &str, cols: usize) -> (String, String) {
    let mut used = 0;
    let mut at = s.len();
    for (i, c) in s.char_indices() {
        let w = char_width(c);
        if used + w > cols && i > 0 {
            at = i;
            break;
        }
        used += w;
    }
    (s[..at].to_string(), s[at..].to_string())
}

/// Greedy word wrap: the first row is `first` wide, the others `rest`; words
/// longer than a row are cut. Newlines start new rows.
pub(crate) fn wrap(text: &str, first: usize, rest: usize) -> Vec<String> {
    let (first, rest) = (first.max(1), rest.max(1));
    let mut rows: Vec<String> = Vec::new();
    let mut cur = String::new();
    let limit = |rows: &Vec<String>| if rows.is_empty() { first } else { rest };
    for (i, para) in text.split('\n').enumerate() {
        if i > 0 {
            rows.push(std::mem::take(&mut cur));
        }
        for word in para.split(' ') {
            let mut word = word.to_string();
            loop {
                let room = limit(&rows);
                let cur_w = width_of(&cur);
                let need = if cur.is_empty() { 0 } else { 1 } + width_of(&word);
                if cur_w + need <= room {
                    if !cur.is_empty() {
                        cur.push(' ');
                    }
                    cur.push_str(&word);
                    break;
                }
                if !cur.is_empty() {
                    rows.push(std::mem::take(&mut cur));
                    continue;
                }
                // A word longer than the row: cut it.
                let (head, rest) = split_cols(&word, room);
                word = rest;
                rows.push(head);
                if word.is_empty() {
                    break;
                }
            }
        }
    }
    rows.push(cur);
    rows
}

/// The rows of the open conversation, `width` wide, oldest first.
pub(crate) fn message_rows(msgs: &[MessageView], width: usize, t: &Theme) -> Vec<Line<'static>> {
    let mut out = Vec::new();
    let mut day = None;
    for m in msgs {
        let stamp = utc_minutes(m.sent_ms);
        let (date, time) = stamp.split_at(10);
        let time = time.trim().to_string();
        if day.as_deref() != Some(date) {
            day = Some(date.to_string());
            let label = format!(" {date} ");
            let side = width.saturating_sub(width_of(&label)) / 2;
            out.push(Line::styled(
                format!("{}{label}{}", "─".repeat(side), "─".repeat(side)),
                t.dim(),
            ));
        }
        let out_dir = m.direction == "out";
        let author = if out_dir {
            "me".to_string()
        } else {
            clean(&m.from)
        };
        let prefix_w = width_of(&time) + 1 + width_of(&author) + 2;
        let indent = width_of(&time) + 1;
        let first_room = width.saturating_sub(prefix_w).max(8);
        let rows = wrap(
            &clean(&m.text),
            first_room,
            width.saturating_sub(indent).max(8),
        );
        let state = if out_dir {
            m.state.clone()
        } else {
            String::new()
        };
        let n = rows.len();
        for (i, row) in rows.into_iter().enumerate() {
            let mut spans = if i == 0 {
                vec![
                    Span::styled(time.clone(), t.dim()),
                    Span::raw(" "),
                    Span::styled(author.clone(), if out_dir { t.me() } else { t.peer() }),
                    Span::raw(": "),
                ]
            } else {
                vec![Span::raw(" ".repeat(indent))]
            };
            let used = if i == 0 { prefix_w } else { indent } + width_of(&row);
            spans.push(Span::raw(row));
            if i + 1 == n && !state.is_empty() {
                if used + 1 + width_of(&state) <= width {
                    spans.push(Span::raw(" ".repeat(width - used - width_of(&state))));
                    spans.push(Span::styled(state.clone(), t.state(&state)));
                } else {
                    out.push(Line::from(spans));
                    let pad = width.saturating_sub(width_of(&state));
                    spans = vec![
                        Span::raw(" ".repeat(pad)),
                        Span::styled(state.clone(), t.state(&state)),
                    ];
                }
            }
            out.push(Line::from(spans));
        }
    }
    out
}

/// A rectangle of at most `w` x `h` in the middle of `area`.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// Draws the whole UI.
pub(crate) fn draw(f: &mut Frame, app: &App, t: &Theme) {
    let area = f.area();
    match &app.screen {
        Screen::Chat => draw_chat(f, app, t, area),
        Screen::Setup(step) => draw_setup(f, app, t, area, *step),
        Screen::Wait(text) => {
            let lines = vec![
                Line::styled("Peerchat", t.accent()),
                Line::raw(""),
                Line::raw(text.clone()),
                Line::raw(""),
                Line::styled("Ctrl-C: quit", t.dim()),
            ];
            let r = centered(area, 70, 9);
            f.render_widget(
                Paragraph::new(lines)
                    .wrap(Wrap { trim: false })
                    .block(Block::bordered()),
                r,
            );
        }
        Screen::Fatal(e) => {
            let lines = vec![
                Line::styled("peerchat cannot go on", t.error()),
                Line::raw(""),
                Line::raw(clean(e)),
                Line::raw(""),
                Line::styled("Enter: quit", t.dim()),
            ];
            let r = centered(area, 76, 14);
            f.render_widget(
                Paragraph::new(lines)
                    .wrap(Wrap { trim: false })
                    .block(Block::bordered().title(" error ")),
                r,
            );
        }
    }
}

fn notice_line(app: &App, t: &Theme) -> Line<'static> {
    match &app.notice {
        Some((Level::Error, n)) => Line::from(vec![
            Span::styled("error: ", t.error()),
            Span::raw(clean(n)),
        ]),
        Some((Level::Info, n)) => Line::raw(clean(n)),
        None => Line::raw(""),
    }
}

/// An input line `w` columns wide showing the cursor: returns the visible
/// text and the cursor's column.
fn visible_input(app: &App, w: usize) -> (String, usize) {
    let w = w.max(2);
    let chars: Vec<char> = app.input.text.chars().collect();
    let cursor = app.input.cursor.min(chars.len());
    // Start as far left as keeps the cursor (and one column for it) in view.
    let mut start = cursor;
    let mut before = 0;
    while start > 0 && before + char_width(chars[start - 1]) < w {
        start -= 1;
        before += char_width(chars[start]);
    }
    let mut shown = String::new();
    let mut used = 0;
    for &c in &chars[start..] {
        let cw = char_width(c);
        if used + cw > w {
            break;
        }
        used += cw;
        shown.push(c);
    }
    (shown, before)
}

fn draw_setup(f: &mut Frame, app: &App, t: &Theme, area: Rect, step: SetupStep) {
    let r = centered(area, 72, 14);
    let block = Block::bordered()
        .padding(Padding::horizontal(1))
        .title(Span::styled(" Welcome to Peerchat ", t.accent()));
    let inner = block.inner(r);
    f.render_widget(Clear, r);
    f.render_widget(block, r);
    let mut lines: Vec<Line> = Vec::new();
    let mut input_row = None;
    match step {
        SetupStep::Name => {
            lines.push(Line::raw("No user in this data dir yet."));
            lines.push(Line::raw(
                "Choose a username: others write to you by it (a-z, 0-9, _ - .).",
            ));
            lines.push(Line::raw(""));
            input_row = Some(lines.len());
            lines.push(Line::raw(""));
            lines.push(Line::raw(""));
            lines.push(notice_line(app, t));
            lines.push(Line::raw(""));
            lines.push(Line::styled("Enter: continue · Ctrl-C: quit", t.dim()));
        }
        SetupStep::Choice => {
            lines.push(Line::raw("How do you want to start?"));
            lines.push(Line::raw(""));
            let opts = ["start a new network", "join: bootstrap address"];
            for (i, o) in opts.iter().enumerate() {
                let text = format!(" {}  {o} ", i + 1);
                if i == app.choice {
                    lines.push(Line::from(vec![
                        Span::raw("> "),
                        Span::styled(text, t.selected()),
                    ]));
                } else {
                    lines.push(Line::raw(format!("  {text}")));
                }
            }
            lines.push(Line::raw(""));
            lines.push(Line::raw(
                "New network: you are the first; others join through your address.",
            ));
            lines.push(Line::raw(
                "Join: type the IP:PORT of someone's running peerchat.",
            ));
            lines.push(Line::raw(""));
            lines.push(notice_line(app, t));
            lines.push(Line::styled(
                "Up/Down or 1/2: choose · Enter: continue · Ctrl-C: quit",
                t.dim(),
            ));
        }
        SetupStep::Address | SetupStep::Rejoin => {
            if step == SetupStep::Rejoin {
                lines.push(Line::raw(app.rejoin_reason.clone()));
                lines.push(Line::raw(
                    "Join: bootstrap address (IP:PORT of a running peerchat),",
                ));
                lines.push(Line::raw("or Esc to go on alone (others can join you)."));
            } else {
                lines.push(Line::raw("Join: bootstrap address"));
                lines.push(Line::raw(
                    "Type the IP:PORT of a running peerchat, e.g. 192.0.2.7:7420.",
                ));
                lines.push(Line::raw(""));
            }
            lines.push(Line::raw(""));
            input_row = Some(lines.len());
            lines.push(Line::raw(""));
            lines.push(Line::raw(""));
            lines.push(notice_line(app, t));
            lines.push(Line::raw(""));
            let back = if step == SetupStep::Rejoin {
                "Esc: go on alone"
            } else {
                "Esc: back"
            };
            lines.push(Line::styled(
                format!("Enter: join · {back} · Ctrl-C: quit"),
                t.dim(),
            ));
        }
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
    if let Some(row) = input_row
        && (row as u16) < inner.height
    {
        let w = inner.width.saturating_sub(2) as usize;
        let (shown, col) = visible_input(app, w);
        let line_area = Rect {
            x: inner.x,
            y: inner.y + row as u16,
            width: inner.width,
            height: 1,
        };
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("> ", t.accent()),
                Span::raw(shown),
            ])),
            line_area,
        );
        f.set_cursor_position(Position::new(line_area.x + 2 + col as u16, line_area.y));
    }
}

fn draw_chat(f: &mut Frame, app: &App, t: &Theme, area: Rect) {
    let [main, notice, input, bar] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(area);
    let list_w = if area.width >= 60 { 22 } else { 0 };
    let [list, conv] =
        Layout::horizontal([Constraint::Length(list_w), Constraint::Min(10)]).areas(main);
    if list_w > 0 {
        draw_list(f, app, t, list);
    }
    draw_conversation(f, app, t, conv);
    f.render_widget(Paragraph::new(notice_line(app, t)), notice);
    draw_input(f, app, t, input);
    draw_status(f, app, t, bar);
    if let Some(p) = &app.popup {
        draw_popup(f, t, area, &p.title, &p.lines);
    }
    if app.help {
        draw_help(f, t, area);
    }
}

fn draw_list(f: &mut Frame, app: &App, t: &Theme, r: Rect) {
    let block = Block::bordered().title(" Chats ");
    let inner = block.inner(r);
    f.render_widget(block, r);
    let w = inner.width as usize;
    let mut lines = Vec::new();
    let listed = app.listed();
    if listed.is_empty() {
        lines.push(Line::styled("none yet", t.dim()));
        lines.push(Line::styled("/chat NAME", t.dim()));
    }
    for (name, unread) in listed {
        let count = if unread > 0 {
            format!(" ({unread})")
        } else {
            String::new()
        };
        let room = w.saturating_sub(width_of(&count) + 1);
        let (mut shown, _) = split_cols(&clean(&name), room);
        let pad = w.saturating_sub(1 + width_of(&shown) + width_of(&count));
        shown = format!(" {shown}{}{count}", " ".repeat(pad));
        let style = if app.open.as_deref() == Some(name.as_str()) {
            t.selected()
        } else if unread > 0 {
            Style::new().add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        };
        lines.push(Line::styled(shown, style));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

fn draw_conversation(f: &mut Frame, app: &App, t: &Theme, r: Rect) {
    let title = match &app.open {
        Some(p) => format!(" {} · times UTC ", clean(p)),
        None => " no conversation open ".to_string(),
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(r);
    f.render_widget(block, r);
    let Some(open) = &app.open else {
        let lines = vec![
            Line::raw("Start a conversation: /chat NAME (Enter)."),
            Line::raw("Add a contact and see their fingerprint: /add NAME."),
            Line::raw("Tab: next conversation · ?: help"),
        ];
        f.render_widget(
            Paragraph::new(lines)
                .style(t.dim())
                .wrap(Wrap { trim: false }),
            inner,
        );
        return;
    };
    if app.messages.is_empty() {
        f.render_widget(
            Paragraph::new(format!(
                "No messages with {} yet: type below, Enter sends.",
                clean(open)
            ))
            .style(t.dim())
            .wrap(Wrap { trim: false }),
            inner,
        );
        return;
    }
    let rows = message_rows(&app.messages, inner.width as usize, t);
    let h = inner.height as usize;
    let max_scroll = rows.len().saturating_sub(h);
    let scroll = app.scroll.min(max_scroll);
    let end = rows.len() - scroll;
    let start = end.saturating_sub(h);
    let shown: Vec<Line> = rows[start..end].to_vec();
    f.render_widget(Paragraph::new(shown), inner);
    if scroll > 0 {
        let label = format!(" ↓ {scroll} more (PgDn) ");
        let lw = width_of(&label) as u16;
        if lw + 2 < r.width {
            let at = Rect {
                x: r.x + r.width - lw - 1,
                y: r.y + r.height - 1,
                width: lw,
                height: 1,
            };
            f.render_widget(Paragraph::new(Span::styled(label, t.accent())), at);
        }
    }
}

fn draw_input(f: &mut Frame, app: &App, t: &Theme, r: Rect) {
    let title = match &app.open {
        Some(p) => format!(" message to {} · Enter sends · /help ", clean(p)),
        None => " /chat NAME · /help · ? ".to_string(),
    };
    let bytes = app.input.text.len();
    let mut block = Block::bordered().title(title);
    if bytes > MAX_TEXT_BYTES * 3 / 4 {
        let style = if bytes > MAX_TEXT_BYTES {
            t.error()
        } else {
            Style::new()
        };
        block = block.title_top(
            Line::styled(format!(" {bytes}/{MAX_TEXT_BYTES} bytes "), style).right_aligned(),
        );
    }
    let inner = block.inner(r);
    f.render_widget(block, r);
    let (shown, col) = visible_input(app, inner.width as usize);
    f.render_widget(Paragraph::new(shown), inner);
    if app.popup.is_none() && !app.help {
        f.set_cursor_position(Position::new(inner.x + col as u16, inner.y));
    }
}

fn draw_status(f: &mut Frame, app: &App, t: &Theme, r: Rect) {
    let mut parts: Vec<Span> = Vec::new();
    match (&app.status, &app.status_error) {
        (_, Some(e)) => {
            parts.push(Span::raw(" node not answering: "));
            parts.push(Span::raw(clean(e)));
        }
        (Some(s), None) => {
            let net = if s.online { "online" } else { "offline" };
            parts.push(Span::styled(
                format!(" {} ", clean(&s.name)),
                Style::new().add_modifier(Modifier::BOLD),
            ));
            let peers = match s.routing_table {
                1 => "1 peer".to_string(),
                n => format!("{n} peers"),
            };
            parts.push(Span::raw(format!(
                "│ {net} │ {peers} │ outbox {} │ relay queue {} ",
                s.outbox, s.relay_queue
            )));
            if !app.live {
                parts.push(Span::raw("│ no live updates "));
            }
            parts.push(Span::raw("│ ? help"));
        }
        (None, None) => parts.push(Span::raw(" connecting to the node…")),
    }
    f.render_widget(Paragraph::new(Line::from(parts)).style(t.bar()), r);
}

fn draw_popup(f: &mut Frame, t: &Theme, area: Rect, title: &str, lines: &[String]) {
    // The whole width, so that nothing else is on the rows of a URL to copy.
    let w = area.width;
    let inner_w = w as usize;
    let rows: usize = lines
        .iter()
        .map(|l| wrap(l, inner_w, inner_w).len())
        .sum::<usize>();
    let h = (rows as u16 + 3).min(area.height);
    let r = centered(area, w, h);
    // Top and bottom borders only, so that the text (a URL) copies cleanly.
    let block = Block::new()
        .borders(Borders::TOP | Borders::BOTTOM)
        .title(Span::styled(format!(" {title} "), t.accent()))
        .title_bottom(Line::styled(" any key closes ", t.dim()).right_aligned());
    let text: Vec<Line> = lines
        .iter()
        .flat_map(|l| wrap(l, inner_w, inner_w))
        .map(Line::raw)
        .collect();
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(text).block(block), r);
}

/// The help screen's lines.
pub(crate) const HELP: &[(&str, &str)] = &[
    (
        "Enter",
        "send the line to the open conversation, or run a /command",
    ),
    ("Tab, Shift-Tab", "next, previous conversation"),
    ("PgUp, PgDn", "scroll the conversation"),
    ("Up, Down", "lines typed before"),
    ("Ctrl-U", "clear to the start of the line"),
    ("Esc", "close a box, clear the notice"),
    ("Ctrl-C", "quit"),
    ("/chat NAME", "open the conversation with NAME"),
    (
        "/add NAME",
        "add a contact: shows the key fingerprint to compare",
    ),
    ("/whois NAME", "fingerprint and addresses of NAME"),
    ("/web", "the address of the web app (with its token)"),
    ("/help, ?", "this screen"),
    ("/quit", "leave"),
];

fn draw_help(f: &mut Frame, t: &Theme, area: Rect) {
    let r = centered(area, 78, HELP.len() as u16 + 8);
    let mut lines = vec![Line::raw("Keys and commands:"), Line::raw("")];
    for (k, v) in HELP {
        lines.push(Line::from(vec![
            Span::styled(format!("{k:<16}"), t.accent()),
            Span::raw(*v),
        ]));
    }
    lines.push(Line::raw(""));
    lines.push(Line::raw(
        "States: queued (waiting), relayed (held for them), delivered, read.",
    ));
    lines.push(Line::styled("Any key closes this.", t.dim()));
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(Span::styled(" Help ", t.accent()))),
        r,
    );
}
