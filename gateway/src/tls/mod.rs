//! TLS: the interception CA, leaf certificates, and reading the ClientHello before deciding
//! whether a connection is terminated here or relayed untouched.
pub mod ca;
pub mod fronting;
pub mod hello;
pub mod leaf;
pub mod readahead;
pub mod upstream;

/// How much plaintext rustls takes in one write before it must flush (its default is 64 KiB).
///
/// HTTP/1.1 chunked framing adds a few bytes to each 64 KiB body chunk; under the default limit
/// those bytes went out as a TLS record, a writev and a TCP segment of their own, once per
/// chunk. Above it, a chunk and its framing leave in one writev.
pub const SEND_BUFFER_LIMIT: usize = 256 * 1024;
