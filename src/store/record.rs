//! A key's record as the file holds it: protobuf (prost, already in the tree) with the
//! access and refresh tokens sealed ([`super::seal`]); the rest is plain.

/// One key's token.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Record {
    #[prost(uint64, tag = "1")]
    pub generation: u64,
    /// Sealed.
    #[prost(bytes = "vec", tag = "2")]
    pub access_token: Vec<u8>,
    #[prost(string, tag = "3")]
    pub token_type: String,
    #[prost(int64, tag = "4")]
    pub issued_seconds: i64,
    #[prost(uint32, tag = "5")]
    pub issued_nanos: u32,
    #[prost(uint64, tag = "6")]
    pub lifetime_ms: u64,
    /// Sealed; absent once taken.
    #[prost(bytes = "vec", optional, tag = "7")]
    pub refresh_token: Option<Vec<u8>>,
    /// Why the token was minted (`issued`, `renewed`, `forced`, `reissued`).
    #[prost(string, tag = "8")]
    pub reason: String,
    /// The scope the server granted, if it said.
    #[prost(string, optional, tag = "9")]
    pub scope: Option<String>,
}
