use serde_json::json;

use super::*;
use crate::top::model::parse_overview;

fn overview(t: u64) -> Value {
    json!({
        "t": t,
        "frontends": [
            {"name": "web", "pool": "app", "http": false,
             "sample": {"active": 4, "conns": 12.0, "requests": 0.0, "errors": 0.0}},
            {"name": "site", "pool": "pages", "http": true,
             "sample": {"active": 1, "conns": 1.0, "requests": 250.0, "errors": 0.5, "p99_ms": 12.5}},
        ],
        "pools": [
            {"name": "app", "algorithm": "round-robin", "queue_length": 0,
             "sample": {"active": 4, "conns": 12.25},
             "servers": [
                {"address": "127.0.0.1:9001", "state": "up", "health": "up",
                 "sample": {"active": 3, "conns": 8.0, "errors": 0.0, "p99_ms": 0.3}},
                {"address": "127.0.0.1:9002", "state": "drain", "health": "up",
                 "sample": {"active": 1, "conns": 4.25}},
             ]},
            {"name": "pages", "algorithm": "least-connections", "queue_length": 2,
             "sample": {"active": 1, "requests": 250.0},
             "servers": [
                {"address": "web.test:80#10.0.0.7", "state": "up", "health": "down",
                 "max_connections": 50, "sample": {"active": 1, "conns": 0.5, "requests": 250.0}},
             ]},
        ],
    })
}

fn app() -> App {
    let mut a = App::new("http://127.0.0.1:9090".into(), Duration::from_millis(500));
    a.on_overview(parse_overview(&overview(3_600 * 13 + 61)));
    a
}

fn texts(rows: &[Row]) -> Vec<&str> {
    rows.iter().map(|r| r.text.as_str()).collect()
}

fn selected(a: &App) -> String {
    let (rows, at) = a.body(120);
    let at = at.expect("a selected line");
    assert!(rows[at].selected);
    rows[at].text.split_whitespace().nth(1).unwrap().to_string()
}

#[test]
fn the_first_server_is_selected_and_keys_move_through_every_pool() {
    let mut a = app();
    assert_eq!(selected(&a), "127.0.0.1:9001");
    assert_eq!(a.key(Key::Char('j')), Effect::Nothing);
    assert_eq!(selected(&a), "127.0.0.1:9002");
    a.key(Key::Down);
    assert_eq!(selected(&a), "web.test:80#10.0.0.7", "into the next pool");
    a.key(Key::Down);
    assert_eq!(selected(&a), "web.test:80#10.0.0.7", "stops at the last");
    a.key(Key::Char('k'));
    a.key(Key::Up);
    a.key(Key::Up);
    assert_eq!(selected(&a), "127.0.0.1:9001", "stops at the first");
    a.key(Key::End);
    assert_eq!(selected(&a), "web.test:80#10.0.0.7");
    a.key(Key::Char('g'));
    assert_eq!(selected(&a), "127.0.0.1:9001");
}

#[test]
fn the_selection_follows_its_server_when_others_come_and_go() {
    let mut a = app();
    a.key(Key::Down);
    let mut v = overview(3_600 * 13 + 62);
    v["pools"][0]["servers"].as_array_mut().unwrap().remove(0);
    a.on_overview(parse_overview(&v));
    assert_eq!(selected(&a), "127.0.0.1:9002");
    // Its server gone, the selection falls back to the first.
    v["pools"][0]["servers"].as_array_mut().unwrap().clear();
    a.on_overview(parse_overview(&v));
    assert_eq!(selected(&a), "web.test:80#10.0.0.7");
}

#[test]
fn drain_and_enable_ask_first_and_send_the_ctl_route_body() {
    let mut a = app();
    a.key(Key::End);
    assert_eq!(a.key(Key::Char('d')), Effect::Nothing, "nothing is sent before y");
    let prompt = a.status(120);
    assert_eq!(prompt.tone, Tone::Prompt);
    assert_eq!(prompt.text, "drain web.test:80 in pool pages? y: yes, any other key: no");
    let want = Action { pool: "pages".into(), address: "web.test:80".into(), state: "drain" };
    assert_eq!(a.key(Key::Char('y')), Effect::Send(want.clone()));
    assert_eq!(want.body(), json!({"state": "drain"}));
    a.on_done(Ok(want.done()));
    assert_eq!(a.status(120).text, "draining web.test:80 in pages: no new connections");

    a.key(Key::Home);
    a.key(Key::Char('e'));
    let want = Action { pool: "app".into(), address: "127.0.0.1:9001".into(), state: "up" };
    assert_eq!(a.key(Key::Char('Y')), Effect::Send(want.clone()));
    assert_eq!(want.body(), json!({"state": "up"}));

    // Any other key is a no; Esc there cancels rather than quits.
    for no in [Key::Char('n'), Key::Esc, Key::Char('d'), Key::Down] {
        a.key(Key::Char('d'));
        assert_eq!(a.key(no), Effect::Nothing, "{no:?}");
        assert!(a.status(120).text.starts_with("not done: drain"), "{no:?}");
    }
    // A refusal from the API is shown as it came.
    a.on_done(Err("404: no server 127.0.0.1:9001 in pool app".into()));
    let s = a.status(120);
    assert_eq!((s.text.as_str(), s.tone), ("404: no server 127.0.0.1:9001 in pool app", Tone::Bad));
}

#[test]
fn quit_keys_and_ctrl_c_even_while_asking() {
    for k in [Key::Char('q'), Key::Esc, Key::CtrlC] {
        assert_eq!(app().key(k), Effect::Quit, "{k:?}");
    }
    let mut a = app();
    a.key(Key::Char('d'));
    assert_eq!(a.key(Key::CtrlC), Effect::Quit);
}

#[test]
fn keys_without_a_server_do_nothing_harmful() {
    let mut a = App::new("http://x".into(), Duration::from_secs(1));
    for k in [Key::Down, Key::Up, Key::End, Key::PageDown, Key::Other] {
        assert_eq!(a.key(k), Effect::Nothing);
    }
    a.key(Key::Char('d'));
    assert_eq!(a.key(Key::Char('y')), Effect::Nothing, "no question was asked");
    assert_eq!(a.status(80).text, "no server selected");
}

#[test]
fn uptimes_show_their_two_largest_units() {
    let cases = [(45, "45s"), (725, "12m 5s"), (11_525, "3h 12m"), (183_600, "2d 3h")];
    for (secs, text) in cases {
        assert_eq!(uptime(secs), text);
    }
}

#[test]
fn rows_show_rates_states_and_the_unit_of_the_pool() {
    let a = app();
    let head = a.header(200);
    assert_eq!(head[0].text, "fulcrum top · http://127.0.0.1:9090 · 13:01:01 UTC · every 500ms");
    let mut b = App::new("http://127.0.0.1:9090".into(), Duration::from_secs(1));
    let mut v = overview(3_600 * 13 + 61);
    v["uptime_s"] = json!(3 * 3_600 + 12 * 60 + 5);
    v["reloads"] = json!(2);
    b.on_overview(parse_overview(&v));
    assert_eq!(
        b.header(200)[0].text,
        "fulcrum top · http://127.0.0.1:9090 · 13:01:01 UTC · up 3h 12m, 2 reloads · every 1s"
    );
    assert_eq!(
        b.header(80)[0].text,
        "fulcrum top · http://127.0.0.1:9090 · 13:01:01 UTC · up 3h 12m, 2 reloads"
    );
    assert_eq!(
        head[1].text,
        "2 frontends · 2 pools · 3 servers: 1 in rotation, 1 drain, 0 maint, 1 failing"
    );
    let (rows, _) = a.body(120);
    let t = texts(&rows);
    let find = |p: &str| {
        let i = t.iter().position(|l| l.trim_start().starts_with(p));
        rows[i.unwrap_or_else(|| panic!("no line {p}: {t:#?}"))].clone()
    };
    let web = find("web");
    assert_eq!(
        web.text.split_whitespace().collect::<Vec<_>>(),
        ["web", "app", "4", "12.0", "-", "0.0", "-"]
    );
    let site = find("site");
    assert_eq!(
        site.text.split_whitespace().collect::<Vec<_>>(),
        ["site", "pages", "1", "1.0", "250", "0.5", "12.5"]
    );
    assert_eq!(find("pool app").text, "pool app · round-robin · 1/2 in rotation");
    assert_eq!(
        find("pool pages").text,
        "pool pages · least-connections · 0/1 in rotation · 2 waiting"
    );
    // tcp pool: conn/s; http pool: req/s.
    assert!(t.iter().any(|l| l.contains("CONN/S") && l.ends_with("conn/s, last 5m")));
    assert!(t.iter().any(|l| l.contains("REQ/S") && l.ends_with("req/s, last 5m")));
    let s1 = find("> 127.0.0.1:9001");
    let cols: Vec<&str> = s1.text.split_whitespace().collect();
    assert_eq!(&cols[..8], [">", "127.0.0.1:9001", "up", "up", "3", "8.0", "0.0", "0.30"]);
    assert_eq!(s1.tone, Tone::Plain);
    let s2 = find("127.0.0.1:9002");
    assert_eq!(s2.tone, Tone::Aside, "drain: out of rotation by choice");
    assert!(!s2.selected);
    let named = find("web.test:80#10.0.0.7");
    let cols: Vec<&str> = named.text.split_whitespace().collect();
    assert_eq!(&cols[..7], ["web.test:80#10.0.0.7", "up", "down", "1/50", "250", "-", "-"]);
    assert_eq!(named.tone, Tone::Bad);
    // Each pool has its own total row.
    assert_eq!(t.iter().filter(|l| l.trim_start().starts_with("(pool)")).count(), 2);
}

#[test]
fn sparklines_of_one_pool_share_a_scale() {
    let mut a = app();
    for t in 1..=3 {
        a.on_overview(parse_overview(&overview(3_600 * 13 + 61 + t)));
    }
    // Wide enough for one cell a second.
    let (rows, _) = a.body(400);
    let spark = |addr: &str| {
        let r = rows.iter().find(|r| r.text.contains(addr)).unwrap();
        r.text.chars().rev().take(4).collect::<String>().chars().rev().collect::<String>()
    };
    // 8 conn/s is the pool's peak, 4.25 about half of it.
    assert_eq!(spark("127.0.0.1:9001"), "████");
    assert_eq!(spark("127.0.0.1:9002"), "▅▅▅▅");
}

#[test]
fn api_errors_are_shown_and_the_last_view_kept() {
    let mut a = App::new("http://127.0.0.1:1".into(), Duration::from_secs(1));
    a.on_overview(Err("cannot reach the admin API at http://127.0.0.1:1: refused".into()));
    let (rows, sel) = a.body(80);
    assert!(rows[0].text.starts_with("no answer from the admin API yet"));
    assert_eq!(sel, None);
    let s = a.status(200);
    assert_eq!(s.tone, Tone::Bad);
    assert_eq!(
        s.text,
        "admin API: cannot reach the admin API at http://127.0.0.1:1: refused (retrying every 1s)"
    );
    assert!(a.status(20).text.chars().count() <= 20, "cut to the width");
    a.on_overview(parse_overview(&overview(100)));
    a.on_overview(Err("401: missing or wrong token\n  more".into()));
    assert!(a.body(80).0.iter().any(|r| r.text.starts_with("pool app")), "the last view stays");
    assert!(!a.status(200).text.contains('\n'));
    a.on_overview(parse_overview(&overview(101)));
    assert_eq!(a.status(200).tone, Tone::Hint, "a good answer clears the error");
}

#[test]
fn numbers_fit_their_columns() {
    assert_eq!(rate(None), "-");
    assert_eq!(rate(Some(f64::NAN)), "-");
    assert_eq!(rate(Some(0.0)), "0.0");
    assert_eq!(rate(Some(99.94)), "99.9");
    assert_eq!(rate(Some(123_456.0)), "123456");
    assert_eq!(rate(Some(12_345_678.0)), "12346k");
    assert_eq!(ms(Some(0.256)), "0.26");
    assert_eq!(ms(Some(250.0)), "250.0");
    assert_eq!(ms(Some(2500.0)), "2500");
    assert_eq!(clip("[2001:db8::1234:5678]:8080", 12), "…:5678]:8080");
    assert_eq!(clip("abc", 0), "");
    assert_eq!(fit("abcdef", 3), "abc");
}

#[test]
fn long_addresses_leave_a_sparkline_at_80_columns() {
    let mut v = overview(100);
    v["pools"][0]["servers"][0]["address"] =
        json!("a-very-long-host-name.example.internal:8443#10.1.2.3");
    let mut a = App::new("http://x".into(), Duration::from_secs(1));
    a.on_overview(parse_overview(&v));
    let (rows, _) = a.body(80);
    let r = rows.iter().find(|r| r.text.contains("8443#")).expect("the server");
    assert!(r.text.contains('…'), "the address cut: {}", r.text);
    assert_eq!(r.text.chars().count(), 80);
    assert!(r.text.contains("8443#10.1.2.3"), "{}", r.text);
}
