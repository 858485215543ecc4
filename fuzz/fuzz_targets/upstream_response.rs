//! The platform's answers, any bytes: the token and grant parsers classify every one
//! (a grant, a code, or an error) and never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenbroker::upstream::response::{Answer, grant_answer, token_answer};

fuzz_target!(|data: &[u8]| {
    // Two bytes of status (any u16, real or not), a Retry-After of up to 255 bytes, then
    // the body.
    let (status, rest) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]), rest),
        _ => return,
    };
    let (retry_after, body) = match rest {
        [n, rest @ ..] => rest.split_at(usize::from(*n).min(rest.len())),
        [] => (&[][..], rest),
    };
    let retry_after = std::str::from_utf8(retry_after).ok();
    let answer = Answer {
        status,
        retry_after,
        body,
    };
    let _ = token_answer(answer);
    let _ = grant_answer(answer);
});
