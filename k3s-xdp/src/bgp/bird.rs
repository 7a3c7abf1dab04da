//! The routing daemon's view of its BGP sessions, read from BIRD's control socket (what `birdc
//! show protocols` prints), in restricted mode: k3s-xdp only reads, it never configures BIRD.
//! Absent, refused or slow, the answer is an error for status to show; nothing depends on it.
//!
//! BIRD's socket protocol: a greeting (`0001 BIRD 2.0.12 ready.`), then one command per line;
//! each reply line starts with a four-digit code and `-` (more lines follow) or a space (the
//! last line), or with a space alone (another line of the previous code). Codes 0xxx end a
//! reply, 1xxx carry data, 2xxx headings, 8xxx and 9xxx errors.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::{path::Path, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

/// One BGP session as BIRD reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The protocol's name in bird.conf (`protocol bgp upstream { ... }`).
    pub name: String,
    /// BIRD's protocol state: `up`, `start` (connecting), `down`, ...
    pub state: String,
    /// When the state last changed, as BIRD prints it.
    pub since: String,
    /// The BGP state and the last error: `Established`, `Active  Socket: Connection refused`.
    pub info: String,
}

impl Session {
    pub fn established(&self) -> bool {
        self.state == "up" && self.info.starts_with("Established")
    }
}

/// The BGP sessions of the BIRD behind `socket`, within `limit`.
pub async fn sessions(socket: &Path, limit: Duration) -> Result<Vec<Session>> {
    tokio::time::timeout(limit, ask(socket))
        .await
        .map_err(|_| anyhow!("{}: no answer within {limit:?}", socket.display()))?
}

async fn ask(socket: &Path) -> Result<Vec<Session>> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot connect to BIRD's control socket {}",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    reply(&mut lines).await.context("reading BIRD's greeting")?;
    write.write_all(b"restrict\n").await?;
    reply(&mut lines)
        .await
        .context("entering restricted mode")?;
    write.write_all(b"show protocols\n").await?;
    let text = reply(&mut lines).await.context("show protocols")?;
    if let Some(error) = text
        .iter()
        .find(|l| l.starts_with('8') || l.starts_with('9'))
    {
        bail!(
            "BIRD refused `show protocols`: {}",
            error.get(5..).unwrap_or(error)
        );
    }
    Ok(parse_protocols(&text))
}

/// The lines of one reply, up to its last.
async fn reply<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
) -> Result<Vec<String>> {
    let mut text = Vec::new();
    loop {
        let Some(line) = lines.next_line().await? else {
            bail!("BIRD closed the control socket");
        };
        let last = is_last(&line);
        text.push(line);
        if last {
            return Ok(text);
        }
    }
}

/// Whether `line` ends a reply: a code 0000-9999 followed by a space.
fn is_last(line: &str) -> bool {
    let b = line.as_bytes();
    b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b' '
}

/// The BGP sessions in the lines of a `show protocols` reply.
pub fn parse_protocols(lines: &[String]) -> Vec<Session> {
    let mut code = "";
    let mut out = Vec::new();
    for line in lines {
        let data = match line.as_bytes() {
            [d0, d1, d2, d3, b'-' | b' ', ..]
                if [d0, d1, d2, d3].iter().all(|d| d.is_ascii_digit()) =>
            {
                code = &line[..4];
                &line[5..]
            }
            [b' ', ..] => &line[1..],
            _ => continue,
        };
        if code != "1002" {
            continue;
        }
        let words: Vec<&str> = data.split_whitespace().collect();
        let [name, proto, _table, state, rest @ ..] = words.as_slice() else {
            continue;
        };
        if *proto != "BGP" {
            continue;
        }
        // `since` is a time (`10:00:03.456`), or a date and a time with `iso long`.
        let time = |w: &&str| w.contains(':');
        let since_words = match rest {
            [date, t, ..] if !time(date) && date.contains('-') && time(t) => 2,
            [] => 0,
            _ => 1,
        };
        out.push(Session {
            name: name.to_string(),
            state: state.to_string(),
            since: rest[..since_words].join(" "),
            info: rest[since_words..].join(" "),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_string).collect()
    }

    /// BIRD 2.0.12's `show protocols`, with sessions up, connecting and down.
    #[test]
    fn show_protocols_gives_the_bgp_sessions() {
        let text = lines(
            "2002-Name       Proto      Table      State  Since         Info\n\
             1002-device1    Device     ---        up     08:00:01.001  \n \
             kernel_vips Kernel     master4    up     08:00:01.001  \n \
             upstream   BGP        ---        up     08:00:03.456  Established   \n \
             backup     BGP        ---        start  08:00:01.001  Active        Socket: Connection refused\n \
             old        BGP        ---        down   2026-12-02 23:59:59  \n \
             bfd1       BFD        ---        up     08:00:01.001  \n\
             0000 ",
        );
        let s = parse_protocols(&text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(
            s[0],
            Session {
                name: "upstream".into(),
                state: "up".into(),
                since: "08:00:03.456".into(),
                info: "Established".into()
            }
        );
        assert!(s[0].established());
        assert_eq!(s[1].info, "Active Socket: Connection refused");
        assert!(!s[1].established());
        assert_eq!(s[2].since, "2026-12-02 23:59:59");
        assert_eq!(s[2].info, "");
    }

    #[test]
    fn replies_end_with_a_code_and_a_space() {
        assert!(is_last("0000 "));
        assert!(is_last("0001 BIRD 2.0.12 ready."));
        assert!(!is_last("1002-upstream BGP"));
        assert!(!is_last(" upstream BGP"));
        assert!(!is_last("12"));
        assert!(parse_protocols(&lines("garbage\n\u{0}\n9001 syntax error")).is_empty());
    }

    /// A real socket that answers like BIRD, and one that never answers.
    #[tokio::test]
    async fn a_bird_socket_is_read_and_a_silent_one_times_out() {
        let dir = std::env::temp_dir().join(format!("k3sxdp-bird-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bird.ctl");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            write.write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
            assert_eq!(lines.next_line().await.unwrap().unwrap(), "restrict");
            write.write_all(b"0016 Access restricted\n").await.unwrap();
            assert_eq!(lines.next_line().await.unwrap().unwrap(), "show protocols");
            write
                .write_all(
                    b"2002-Name  Proto  Table  State  Since  Info\n1002-up1 BGP --- up 08:00:00.000 Established\n0000 \n",
                )
                .await
                .unwrap();
            // A second client that gets no greeting.
            let (_silent, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
        });
        let s = sessions(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(s.len(), 1);
        assert!(s[0].established());
        let e = sessions(&path, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("no answer within"), "{e}");
        server.abort();
        let missing = sessions(&dir.join("none.ctl"), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(
            format!("{missing:#}").contains("cannot connect"),
            "{missing:#}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
