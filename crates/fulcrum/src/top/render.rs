//! Paints the lines of `view.rs` with ratatui: the header at the top, the status line at the
//! bottom, and between them the frontends and pools, scrolled so the selected server stays in
//! sight. Drawn into any backend, so tests draw into ratatui's `TestBackend`.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;

use super::view::{App, Row, Tone};

pub fn draw(frame: &mut Frame, app: &mut App) {
    let area = frame.area();
    let width = usize::from(area.width);
    let header = app.header(width);
    let (body, selected) = app.body(width);
    let status = app.status(width);
    let [top, middle, bottom] = Layout::vertical([
        Constraint::Length(u16::try_from(header.len()).unwrap_or(u16::MAX)),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(lines(&header)), top);
    app.offset = scroll(app.offset, selected, body.len(), usize::from(middle.height));
    let shown = body.get(app.offset..).unwrap_or_default();
    frame.render_widget(Paragraph::new(lines(shown)), middle);
    frame.render_widget(Paragraph::new(lines(std::slice::from_ref(&status))), bottom);
}

/// The first body line to show: the previous one, moved as little as it takes to keep the
/// selected line on screen (so the view does not jump while the selection moves inside it).
fn scroll(offset: usize, selected: Option<usize>, len: usize, height: usize) -> usize {
    if height == 0 {
        return 0;
    }
    let mut o = offset.min(len.saturating_sub(height));
    if let Some(s) = selected {
        if s < o {
            o = s;
        } else if s >= o + height {
            o = s + 1 - height;
        }
    }
    o
}

fn lines(rows: &[Row]) -> Vec<Line<'static>> {
    rows.iter().map(|r| Line::styled(r.text.clone(), style(r))).collect()
}

fn style(r: &Row) -> Style {
    let s = match r.tone {
        Tone::Title => Style::new().add_modifier(Modifier::BOLD),
        Tone::Heading => Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        Tone::Columns => Style::new().add_modifier(Modifier::BOLD),
        Tone::Plain => Style::new(),
        Tone::Aside => Style::new().fg(Color::Yellow),
        Tone::Bad => Style::new().fg(Color::Red),
        Tone::Prompt => Style::new().fg(Color::Black).bg(Color::Yellow),
        Tone::Hint => Style::new().add_modifier(Modifier::DIM),
    };
    if r.selected { s.add_modifier(Modifier::REVERSED) } else { s }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    use super::*;
    use crate::top::model::parse_overview;
    use crate::top::view::Key;

    fn app(servers: usize) -> App {
        let list: Vec<_> = (0..servers)
            .map(|i| {
                json!({"address": format!("127.0.0.1:{}", 9000 + i), "state": "up",
                       "health": "up", "sample": {"active": 1, "conns": 2.5}})
            })
            .collect();
        let v = json!({"t": 86_399, "frontends": [{"name": "web", "pool": "app", "http": false,
            "sample": {"active": 3, "conns": 7.0}}],
            "pools": [{"name": "app", "algorithm": "round-robin", "servers": list,
                       "sample": {"active": 3, "conns": 7.0}}]});
        let mut a = App::new("http://127.0.0.1:9090".into(), Duration::from_secs(1));
        a.on_overview(parse_overview(&v).map_err(|e| e.to_string()));
        a
    }

    fn screen(a: &mut App, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, a)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| (0..w).map(|x| buf[(x, y)].symbol().to_string()).collect::<String>())
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    #[test]
    fn an_80x24_screen_holds_header_pool_servers_and_keys() {
        let mut a = app(3);
        let s = screen(&mut a, 80, 24);
        assert!(s[0].starts_with("fulcrum top · http://127.0.0.1:9090 · 23:59:59 UTC"), "{s:#?}");
        assert!(s.iter().any(|l| l.starts_with("pool app · round-robin · 3/3 in rotation")));
        let row = s.iter().find(|l| l.starts_with("> 127.0.0.1:9000")).expect("selected row");
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(&cols[1..7], ["127.0.0.1:9000", "up", "up", "1", "2.5", "-"], "{row}");
        // The sparkline column (the only point is the newest: its last cell) reaches the edge.
        assert_eq!(row.chars().count(), 80, "{row}");
        assert!(row.ends_with('█'), "{row}");
        assert!(s[23].contains("d drain"), "{s:#?}");
    }

    #[test]
    fn a_wider_screen_gives_the_sparklines_the_room() {
        let mut a = app(1);
        let narrow = screen(&mut a, 80, 24);
        let wide = screen(&mut a, 200, 50);
        let heading =
            |s: &[String]| s.iter().find(|l| l.trim_start().starts_with("SERVER")).unwrap().clone();
        assert!(heading(&narrow).ends_with("conn/s, last 5m"));
        let row = |s: &[String]| s.iter().find(|l| l.contains("127.0.0.1:9000")).unwrap().clone();
        assert_eq!(row(&narrow).chars().count(), 80);
        assert_eq!(row(&wide).chars().count(), 200);
    }

    #[test]
    fn the_selected_server_stays_on_screen_in_a_long_pool() {
        let mut a = app(40);
        a.key(Key::End);
        let s = screen(&mut a, 80, 24);
        assert!(s[0].starts_with("fulcrum top"), "the header stays");
        assert!(s.iter().any(|l| l.starts_with("> 127.0.0.1:9039")), "{s:#?}");
        assert!(s[23].contains("q quit"));
        // Back up one line at a time: the view moves only once the selection leaves it.
        let before = a.offset;
        a.key(Key::Up);
        screen(&mut a, 80, 24);
        assert_eq!(a.offset, before);
        a.key(Key::Home);
        let s = screen(&mut a, 80, 24);
        assert!(s.iter().any(|l| l.starts_with("> 127.0.0.1:9000")), "{s:#?}");
    }

    #[test]
    fn scrolling_moves_no_more_than_needed() {
        assert_eq!(scroll(0, Some(5), 100, 10), 0);
        assert_eq!(scroll(0, Some(10), 100, 10), 1);
        assert_eq!(scroll(50, Some(49), 100, 10), 49);
        assert_eq!(scroll(95, None, 100, 10), 90, "never past the end");
        assert_eq!(scroll(3, Some(2), 100, 0), 0);
    }

    #[test]
    fn a_tiny_terminal_draws_without_panicking() {
        let mut a = app(5);
        for (w, h) in [(1, 1), (10, 3), (0, 0), (30, 2)] {
            screen(&mut a, w, h);
        }
    }
}
