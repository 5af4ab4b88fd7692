//! The one bound on what a reader keeps of a body: at most [`MAX_ITEMS`] entries of any list
//! (ref updates, shallow ids, wants, advertised refs, capabilities); more are counted, not kept,
//! so a hostile body cannot grow a reader's memory without end.

/// How many items of one kind a reader keeps of one body.
pub const MAX_ITEMS: usize = 100_000;

/// Keeps `item` in `list`, or counts it in `omitted` once the list is full.
pub(crate) fn keep<T>(list: &mut Vec<T>, omitted: &mut u64, item: T) {
    if list.len() < MAX_ITEMS {
        list.push(item);
    } else {
        *omitted += 1;
    }
}
