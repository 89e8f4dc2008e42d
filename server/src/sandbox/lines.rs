//! opencode's output, line by line, from any byte stream (a child's pipe, a container's attach).

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The longest output line kept whole; longer ones are cut (a tool that printed megabytes).
pub const MAX_LINE: usize = 8 << 20;

/// Reads `r` line by line, cutting lines over [`MAX_LINE`], until EOF or `sink` says stop.
pub async fn read_lines<R, F, Fut>(r: R, mut sink: F)
where
    R: AsyncRead + Unpin,
    F: FnMut(String) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut reader = BufReader::with_capacity(64 * 1024, r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut too_long = false;
        loop {
            let Ok(buf) = reader.fill_buf().await else {
                return;
            };
            if buf.is_empty() {
                break;
            }
            let (take, done) = match buf.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            line.extend_from_slice(&buf[..take.min(room)]);
            too_long |= take > room;
            reader.consume(take);
            if done {
                break;
            }
        }
        if line.is_empty() {
            return;
        }
        let mut text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\n', '\r'])
            .to_string();
        if too_long {
            text.push_str(" …[line cut by delegate]");
        }
        if !sink(text).await {
            return;
        }
    }
}

/// Logs every line of `r` (at debug level) until EOF.
pub async fn drain<R: AsyncRead + Unpin>(r: R, log: impl Fn(&str)) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        log(&l);
    }
}
