//! Server-sent events (`text/event-stream`): the one parser of the format ([`SseParser`], the
//! WHATWG rules, each event's data capped at [`MAX_EVENT_DATA`]), read by the recorder to store
//! each event and by the SSE masker ([`SseMasker`]) to mask completion streams event by event.
mod mask;
mod parse;

pub use self::{
    mask::SseMasker,
    parse::{Block, MAX_EVENT_DATA, MAX_FIELD_VALUE, SseEvent, SseParser},
};
