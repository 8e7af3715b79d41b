//! The channels puzzle's shape, shared by the tests of its statistics: `foo` creates four bounded queues on
//! four lines, the first two identical (the shape of `examples/channels.rs`).

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

pub type Queue<T> = (SyncSender<T>, Receiver<T>);

pub type Queues = (
    Queue<[u8; 64]>,
    Queue<[u8; 64]>,
    Queue<[u8; 256]>,
    Queue<u64>,
);

/// This file's source: tests find `foo`'s lines in it.
pub const SOURCE: &str = include_str!("channels.rs");

#[inline(never)]
pub fn foo() -> Queues {
    let a = sync_channel::<[u8; 64]>(100);
    let b = sync_channel::<[u8; 64]>(100);
    let c = sync_channel::<[u8; 256]>(100);
    let d = sync_channel::<u64>(1000);
    (a, b, c, d)
}
