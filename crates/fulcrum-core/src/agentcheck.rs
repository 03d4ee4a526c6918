//! HAProxy's agent-check text format, for servers polled by the balancer (the pull side of the
//! agent protocol): one line of words separated by spaces, commas or tabs, such as
//! `up 75%`, `drain`, `down#maintenance`, `ready,maxconn:30`. Unknown words are ignored, as
//! HAProxy does; a `#` starts a comment. A bare number is something else: the answer of a
//! server asked how many clients it has (`__clients?`), see [`parse_pulled`].

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentReply {
    pub state: Option<PulledState>,
    /// Weight as a percentage of the configured weight.
    pub weight_pct: Option<u32>,
    pub maxconn: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PulledState {
    /// `up` or `ready`.
    Up,
    Drain,
    /// `down`, `fail`, `stopped` or `maint`.
    Down,
}

/// Parses one agent reply. Never fails: an empty or unknown reply changes nothing.
pub fn parse(text: &str) -> AgentReply {
    let text = text.split('#').next().unwrap_or("");
    let mut r = AgentReply::default();
    for word in text.split([' ', ',', '\t', '\r', '\n']).filter(|w| !w.is_empty()) {
        let w = word.to_ascii_lowercase();
        match w.as_str() {
            "up" | "ready" => r.state = Some(PulledState::Up),
            "drain" => r.state = Some(PulledState::Drain),
            "down" | "fail" | "stopped" | "maint" => r.state = Some(PulledState::Down),
            _ => {
                if let Some(p) = w.strip_suffix('%') {
                    if let Ok(p) = p.parse::<u32>() {
                        r.weight_pct = Some(p.min(256));
                    }
                } else if let Some(n) = w.strip_prefix("maxconn:") {
                    r.maxconn = n.parse().ok();
                }
            }
        }
    }
    r
}

/// What a polled server answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pulled {
    /// A bare number (surrounding whitespace allowed): the clients it serves now, which the
    /// balancer takes as a load report.
    Clients(u64),
    /// Anything else: HAProxy agent-check text.
    Agent(AgentReply),
}

/// Reads one polled answer. A number too large for 64 bits is not a count; as agent text it
/// says nothing.
pub fn parse_pulled(text: &str) -> Pulled {
    let t = text.trim_ascii();
    if !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = t.parse::<u64>()
    {
        return Pulled::Clients(n);
    }
    Pulled::Agent(parse(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_numbers_are_client_counts() {
        assert_eq!(parse_pulled("3"), Pulled::Clients(3));
        assert_eq!(parse_pulled("12\n"), Pulled::Clients(12));
        assert_eq!(parse_pulled(" 0\r\n"), Pulled::Clients(0));
        assert_eq!(parse_pulled("18446744073709551615"), Pulled::Clients(u64::MAX));
        assert_eq!(parse_pulled("18446744073709551616"), Pulled::Agent(AgentReply::default()));
        assert_eq!(parse_pulled("+3"), Pulled::Agent(AgentReply::default()));
        assert_eq!(parse_pulled("3 4"), Pulled::Agent(AgentReply::default()));
        assert_eq!(parse_pulled(""), Pulled::Agent(AgentReply::default()));
        assert_eq!(parse_pulled("75%\n"), Pulled::Agent(parse("75%")));
        assert_eq!(parse_pulled("up 3"), Pulled::Agent(parse("up")));
    }

    #[test]
    fn haproxy_examples() {
        assert_eq!(parse("up\n").state, Some(PulledState::Up));
        assert_eq!(parse("drain").state, Some(PulledState::Drain));
        assert_eq!(parse("down#going away").state, Some(PulledState::Down));
        assert_eq!(parse("75%\n"), AgentReply { state: None, weight_pct: Some(75), maxconn: None });
        assert_eq!(
            parse("ready,maxconn:30 50%"),
            AgentReply { state: Some(PulledState::Up), weight_pct: Some(50), maxconn: Some(30) }
        );
        assert_eq!(parse(""), AgentReply::default());
        assert_eq!(parse("\u{0}\u{ff}garbage %% maxconn:x"), AgentReply::default());
        assert_eq!(parse("MAINT").state, Some(PulledState::Down));
    }
}
