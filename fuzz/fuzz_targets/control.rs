//! The control socket's protocol as the daemon serves it (`controller::control::
//! serve_requests`): the input is what a client writes on the connection, the first byte says
//! whether the peer is root. Every answer is one line of JSON that the CLI reads as a
//! response; a peer that is not root gets one refusal and nothing else; no more is read than
//! the connection's limit.

#![no_main]

use k3s_xdp::controller::{
    control::{serve_requests, MAX_REQUEST},
    status::{Request, Response},
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&who, stream)) = data.split_first() else {
        return;
    };
    let uid = if who & 1 == 0 { 0 } else { 1000 };
    let mut written = Vec::new();
    let mut requests = Vec::new();
    // The controller's part: every request it is handed gets an answer naming it.
    let _ = runtime().block_on(serve_requests(stream, &mut written, uid, |request| {
        requests.push(request.clone());
        std::future::ready(Response::Ok {
            message: format!("{request:?}"),
        })
    }));

    let text = std::str::from_utf8(&written).expect("answers are UTF-8");
    let answers: Vec<Response> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each answer is a response"))
        .collect();
    assert!(
        written.is_empty() || written.ends_with(b"\n"),
        "whole lines"
    );
    let read = &stream[..stream.len().min(MAX_REQUEST)];
    let lines = read.split(|&b| b == b'\n').count();
    assert!(answers.len() <= lines, "no more answers than lines read");
    if uid != 0 {
        assert!(
            requests.is_empty(),
            "a peer that is not root reached the controller"
        );
        assert!(answers.len() <= 1, "one refusal, then the end");
        assert!(answers.iter().all(
            |a| matches!(a, Response::Error { message } if message.contains("permission denied"))
        ));
    }
    let handed = answers
        .iter()
        .filter(|a| matches!(a, Response::Ok { .. }))
        .count();
    assert_eq!(
        handed,
        requests.len(),
        "each request handed over is answered"
    );
    for r in &requests {
        // What reached the controller is a request the CLI could have sent.
        let again: Request = serde_json::from_str(&serde_json::to_string(r).expect("serializes"))
            .expect("reads back");
        assert_eq!(&again, r);
    }
});
