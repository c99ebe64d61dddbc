//! Jobs: schedules ([`schedule`]), the scheduler loop ([`scheduler`]),
//! named queues with worker limits ([`queue`]), exclusive per-source file
//! locks shared with `tabacco backup` ([`lock`]), and the status of every
//! job ([`status`]).

pub mod lock;
pub mod queue;
pub mod schedule;
pub mod scheduler;
pub mod status;
