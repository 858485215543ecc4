//! The token-injecting HTTP proxy for the platform's API (issue 23, in progress): a caller
//! sends plain HTTP to the broker and the broker adds the bearer. So far only the header
//! rules are here; the listener, the forwarding and the 401 retry come next.

pub mod headers;
