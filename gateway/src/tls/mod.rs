//! TLS: the interception CA, leaf certificates, and reading the ClientHello before deciding
//! whether a connection is terminated here or relayed untouched.
pub mod ca;
pub mod hello;
pub mod leaf;
pub mod upstream;
